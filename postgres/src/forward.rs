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
