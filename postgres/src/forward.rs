//! [`forward_backend!`](crate::forward_backend): an adapter's backend type
//! wraps a [`PgBackend`](crate::PgBackend) and implements regent's traits
//! by forwarding every call to it, so no adapter writes them again.

/// Implements [`Lock`](regent_core::Lock), [`Lease`](regent_core::Lease)
/// and [`Backend`](regent_core::Backend) (with its notification and
/// deposing capabilities) for `$ty` by forwarding to the
/// [`PgBackend`](crate::PgBackend) in its field `$field`.
///
/// ```ignore
/// pub struct MyBackend { inner: regent_postgres::PgBackend<MyDriver> }
/// regent_postgres::forward_backend!(MyBackend, inner);
/// ```
#[macro_export]
macro_rules! forward_backend {
    ($ty:ty, $field:ident) => {
        #[$crate::__private::async_trait]
        impl $crate::__private::Lock for $ty {
            async fn connect(&self) -> ::std::result::Result<(), $crate::__private::BackendError> {
                $crate::__private::Lock::connect(&self.$field).await
            }
            async fn try_lock(
                &self,
                namespace: &$crate::__private::Namespace,
                roles: &[$crate::__private::Role],
            ) -> ::std::result::Result<
                $crate::__private::TryLockOutcome,
                $crate::__private::BackendError,
            > {
                $crate::__private::Lock::try_lock(&self.$field, namespace, roles).await
            }
            async fn unlock(
                &self,
                namespace: &$crate::__private::Namespace,
                role: &$crate::__private::Role,
            ) -> ::std::result::Result<(), $crate::__private::BackendError> {
                $crate::__private::Lock::unlock(&self.$field, namespace, role).await
            }
            async fn held(
                &self,
                namespace: &$crate::__private::Namespace,
                roles: &[$crate::__private::Role],
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::__private::Role>,
                $crate::__private::BackendError,
            > {
                $crate::__private::Lock::held(&self.$field, namespace, roles).await
            }
            async fn ping(&self) -> ::std::result::Result<(), $crate::__private::BackendError> {
                $crate::__private::Lock::ping(&self.$field).await
            }
            async fn reset(&self) {
                $crate::__private::Lock::reset(&self.$field).await
            }
            async fn session_closed(&self) {
                $crate::__private::Lock::session_closed(&self.$field).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::__private::Lease for $ty {
            async fn read(
                &self,
                namespace: &$crate::__private::Namespace,
                roles: &[$crate::__private::Role],
            ) -> ::std::result::Result<
                (
                    $crate::__private::DbTimestamp,
                    ::std::vec::Vec<$crate::__private::LeaseRecord>,
                ),
                $crate::__private::BackendError,
            > {
                $crate::__private::Lease::read(&self.$field, namespace, roles).await
            }
            async fn claim(
                &self,
                namespace: &$crate::__private::Namespace,
                role: &$crate::__private::Role,
                holder: &$crate::__private::NodeId,
                lease: ::std::time::Duration,
            ) -> ::std::result::Result<
                $crate::__private::ClaimOutcome,
                $crate::__private::BackendError,
            > {
                $crate::__private::Lease::claim(&self.$field, namespace, role, holder, lease).await
            }
            async fn renew(
                &self,
                namespace: &$crate::__private::Namespace,
                holder: &$crate::__private::NodeId,
                held: &[$crate::__private::HeldLease],
                lease: ::std::time::Duration,
            ) -> ::std::result::Result<
                $crate::__private::RenewOutcome,
                $crate::__private::BackendError,
            > {
                $crate::__private::Lease::renew(&self.$field, namespace, holder, held, lease).await
            }
            async fn expire(
                &self,
                namespace: &$crate::__private::Namespace,
                role: &$crate::__private::Role,
                holder: &$crate::__private::NodeId,
                term: $crate::__private::Term,
            ) -> ::std::result::Result<(), $crate::__private::BackendError> {
                $crate::__private::Lease::expire(&self.$field, namespace, role, holder, term).await
            }
            async fn list(
                &self,
                namespace: ::std::option::Option<&$crate::__private::Namespace>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::__private::LeaseRecord>,
                $crate::__private::BackendError,
            > {
                $crate::__private::Lease::list(&self.$field, namespace).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::__private::Backend for $ty {
            fn notifier(&self) -> ::std::option::Option<&dyn $crate::__private::Notify> {
                $crate::__private::Backend::notifier(&self.$field)
            }
            fn deposer(&self) -> ::std::option::Option<&dyn $crate::__private::Depose> {
                $crate::__private::Backend::deposer(&self.$field)
            }
            async fn release(
                &self,
                namespace: &$crate::__private::Namespace,
                role: &$crate::__private::Role,
                holder: &$crate::__private::NodeId,
                term: ::std::option::Option<$crate::__private::Term>,
            ) -> ::std::result::Result<$crate::__private::Released, $crate::__private::BackendError>
            {
                $crate::__private::Backend::release(&self.$field, namespace, role, holder, term)
                    .await
            }
        }
    };
}

/// The builder options every adapter shares, written once: expands to
/// `schema`, `table`, `application_name`, `statement_timeout`,
/// `tcp_keepalives`, `fenced_idle_timeout`, `lease_mode`, `mode`,
/// `listener_url` and `session_settings` setters
/// inside an adapter builder's `impl` block. The builder needs a field
/// `options:` [`Options`](crate::Options).
#[macro_export]
macro_rules! settings_setters {
    () => {
        /// Schema of the lease table. Default `public`.
        pub fn schema(mut self, schema: &str) -> Self {
            schema.clone_into(&mut self.options.schema);
            self
        }

        /// Name of the lease table. Default `regent_leases`.
        pub fn table(mut self, table: &str) -> Self {
            table.clone_into(&mut self.options.table);
            self
        }

        /// `application_name` of the lock session, shown in
        /// `pg_stat_activity` (the listener appends `:listen`; fenced
        /// transactions carry `regent:fenced:…` while they run). Default
        /// `regent`.
        pub fn application_name(mut self, name: &str) -> Self {
            name.clone_into(&mut self.options.settings.application_name);
            self
        }

        /// `statement_timeout` of the lock session. Default 5 s, at least
        /// 1 ms. A call with no reply within this plus 2 s costs the session.
        pub fn statement_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.options.settings.statement_timeout = timeout;
            self
        }

        /// TCP keepalives of the session and listener (`tcp_keepalives_idle`,
        /// `_interval` in whole seconds, `_count`), so the server drops a
        /// vanished client, and its locks, within about
        /// `idle + interval × count`. Default 5 s, 2 s, 3.
        pub fn tcp_keepalives(
            mut self,
            idle: ::std::time::Duration,
            interval: ::std::time::Duration,
            count: u32,
        ) -> Self {
            self.options.settings.keepalives_idle = idle;
            self.options.settings.keepalives_interval = interval;
            self.options.settings.keepalives_count = count;
            self
        }

        /// How long a fenced transaction may sit idle, and any one statement
        /// in it run, before the server ends it (rolled back, the write does
        /// not happen). A takeover's claim is busy at most this long behind
        /// a frozen leader's fenced work that was not deposed. Default 10 s;
        /// at least 1 ms.
        pub fn fenced_idle_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.options.settings.fenced_idle_timeout = timeout;
            self
        }

        /// Selects lease mode: mutual exclusion from a compare-and-set on
        /// the lease row instead of advisory locks, every statement one
        /// autocommit transaction on the pool, so elections work through a
        /// transaction pooler (PgBouncer `pool_mode=transaction`). Standbys
        /// notice a release at their next retry round. See
        /// [`Mode`]($crate::Mode) for what each mode costs and guarantees.
        pub fn lease_mode(self) -> Self {
            self.mode($crate::Mode::Lease)
        }

        /// Lease mode only: release listeners connect to `url` directly,
        /// past the transaction pooler (which cannot carry `LISTEN`), so
        /// standbys take over a released role at once instead of at their
        /// next retry round. Releases are still published through the pool
        /// (`pg_notify` is transactional and works through a pooler). One
        /// listening connection per namespace the node campaigns in; if it
        /// cannot connect, standbys fall back to polling. Setting it in
        /// session mode is refused when the backend is built.
        pub fn listener_url(mut self, url: &str) -> Self {
            self.options.settings.listener_url = Some($crate::ListenerUrl::new(url));
            self
        }

        /// Session mode (the default) or lease mode; see
        /// [`Mode`]($crate::Mode).
        pub fn mode(mut self, mode: $crate::Mode) -> Self {
            self.options.settings.mode = mode;
            self
        }

        /// How session settings are sent; see
        /// [`SessionSettings`]($crate::SessionSettings).
        pub fn session_settings(mut self, how: $crate::SessionSettings) -> Self {
            self.options.settings.session_settings = how;
            self
        }
    };
}
