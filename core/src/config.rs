//! Election timing and policy, validated when built.
//!
//! The defaults (lease 10 s, renew every 2 s, validate every 1 s, retry every
//! 1 s) fail over a crashed leader in at most about 11 s, hand over a
//! resigned leader in milliseconds, and cost a handful of statements per
//! node per second whatever the number of roles.

use std::time::Duration;

use thiserror::Error;

/// What a node that wins the lock does while the previous holder's lease is
/// still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TakeoverPolicy {
    /// Wait until the predecessor's lease has passed in database time, then
    /// lead. The predecessor has stepped down by then (it stops at its local
    /// deadline, which comes before its lease ends), so two nodes never
    /// believe they lead at once. A crashed leader is replaced within
    /// `lease_duration + retry_interval`.
    #[default]
    WaitForLease,
    /// Lead as soon as the lock is held. Faster after a crash, but a paused
    /// or partitioned predecessor may still believe it leads for up to one
    /// lease: this is safe **only** for side effects guarded by the fencing
    /// token (for example writes through `fenced(token)`).
    Immediate,
}

impl TakeoverPolicy {
    /// The policy's name on command lines and in logs: `wait-for-lease` or
    /// `immediate`.
    pub fn name(self) -> &'static str {
        match self {
            TakeoverPolicy::WaitForLease => "wait-for-lease",
            TakeoverPolicy::Immediate => "immediate",
        }
    }
}

/// A word that names no [`TakeoverPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown takeover policy {0:?}; use wait-for-lease or immediate")]
pub struct UnknownPolicy(pub String);

impl std::str::FromStr for TakeoverPolicy {
    type Err = UnknownPolicy;

    /// Parses `wait-for-lease` (or `wait`) and `immediate`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wait-for-lease" | "wait" => Ok(TakeoverPolicy::WaitForLease),
            "immediate" => Ok(TakeoverPolicy::Immediate),
            other => Err(UnknownPolicy(other.to_owned())),
        }
    }
}

/// A configuration value that breaks a rule. The message names the field
/// and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid regent config: `{field}` {rule} (got {value})")]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// The rule it broke, phrased to follow the field name.
    pub rule: String,
    /// The value it had, formatted.
    pub value: String,
}

impl ConfigError {
    fn new(field: &'static str, rule: impl Into<String>, value: impl std::fmt::Debug) -> Self {
        Self {
            field,
            rule: rule.into(),
            value: format!("{value:?}"),
        }
    }
}

/// Timing and policy of an elector. Build one with [`Config::builder`];
/// [`Config::default`] is valid.
///
/// ```
/// use std::time::Duration;
/// use regent_core::{Config, TakeoverPolicy};
///
/// let config = Config::builder()
///     .lease_duration(Duration::from_secs(4))
///     .renew_interval(Duration::from_secs(1))
///     .takeover_policy(TakeoverPolicy::WaitForLease)
///     .build()
///     .unwrap();
/// assert_eq!(config.lease_duration(), Duration::from_secs(4));
///
/// // Renewing less often than twice per lease is rejected, by name.
/// let err = Config::builder()
///     .lease_duration(Duration::from_secs(4))
///     .renew_interval(Duration::from_secs(3))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field, "renew_interval");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    lease_duration: Duration,
    renew_interval: Duration,
    attempt_timeout: Duration,
    validate_interval: Duration,
    keepalive_interval: Duration,
    retry_interval: Duration,
    retry_jitter: Duration,
    max_drift: f64,
    safety_margin: Duration,
    takeover_policy: TakeoverPolicy,
    preempt_zombies: bool,
    zombie_grace: Duration,
    drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Crash failover is bounded by the lease; 10 s is the common
            // choice of Kubernetes leases and etcd elections.
            lease_duration: Duration::from_secs(10),
            // Five renewals per lease: four may fail before leadership is lost.
            renew_interval: Duration::from_secs(2),
            // One slow statement must not cost leadership, a hung one must
            // not hold it: below the renew interval, far below the lease.
            attempt_timeout: Duration::from_millis(1500),
            // Lock loss (terminated backend) is noticed within a second.
            validate_interval: Duration::from_secs(1),
            // Idle sessions are pinged so dead TCP paths show up.
            keepalive_interval: Duration::from_secs(5),
            // Followers try again every second; notifications make graceful
            // handover much faster than this.
            retry_interval: Duration::from_secs(1),
            // Spreads followers' retries so they do not arrive together.
            retry_jitter: Duration::from_millis(250),
            // Quartz clocks drift by ~1e-5; 1e-3 leaves a wide margin.
            max_drift: 1e-3,
            // Covers scheduling delay between reading the clock and sending.
            safety_margin: Duration::from_millis(200),
            takeover_policy: TakeoverPolicy::WaitForLease,
            // Terminating backends needs a privilege and is opt-in.
            preempt_zombies: false,
            zombie_grace: Duration::from_secs(5),
            // Leader-only work gets this long to finish on resign/shutdown.
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Checks every rule; [`ConfigBuilder::build`] calls this.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("lease_duration", self.lease_duration),
            ("renew_interval", self.renew_interval),
            ("attempt_timeout", self.attempt_timeout),
            ("validate_interval", self.validate_interval),
            ("keepalive_interval", self.keepalive_interval),
            ("retry_interval", self.retry_interval),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero", value));
            }
        }
        if !(self.max_drift.is_finite() && (0.0..0.1).contains(&self.max_drift)) {
            return Err(ConfigError::new(
                "max_drift",
                "must be a rate in [0, 0.1)",
                self.max_drift,
            ));
        }
        if self.renew_interval * 2 >= self.lease_duration {
            return Err(ConfigError::new(
                "renew_interval",
                format!(
                    "must be less than half of lease_duration ({:?})",
                    self.lease_duration
                ),
                self.renew_interval,
            ));
        }
        if self.attempt_timeout * 2 >= self.lease_duration {
            return Err(ConfigError::new(
                "attempt_timeout",
                format!(
                    "must be less than half of lease_duration ({:?})",
                    self.lease_duration
                ),
                self.attempt_timeout,
            ));
        }
        if self.retry_jitter > self.retry_interval {
            return Err(ConfigError::new(
                "retry_jitter",
                format!("must not exceed retry_interval ({:?})", self.retry_interval),
                self.retry_jitter,
            ));
        }
        if self.leader_window() <= self.renew_interval {
            return Err(ConfigError::new(
                "safety_margin",
                format!(
                    "leaves a leadership window (lease_duration·(1-max_drift) - safety_margin = {:?}) \
                     no longer than renew_interval ({:?}); lower it or lengthen the lease",
                    self.leader_window(),
                    self.renew_interval
                ),
                self.safety_margin,
            ));
        }
        if self.preempt_zombies && self.zombie_grace.is_zero() {
            return Err(ConfigError::new(
                "zombie_grace",
                "must be greater than zero when preempt_zombies is on",
                self.zombie_grace,
            ));
        }
        Ok(())
    }

    /// How long a leader's lease lasts in the database after each renewal.
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }
    /// How often a holder renews its leases (one statement for all roles).
    pub fn renew_interval(&self) -> Duration {
        self.renew_interval
    }
    /// The timeout of each single backend call.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }
    /// How often held locks are validated against the database.
    pub fn validate_interval(&self) -> Duration {
        self.validate_interval
    }
    /// How often an otherwise idle session is pinged.
    pub fn keepalive_interval(&self) -> Duration {
        self.keepalive_interval
    }
    /// How often followers try to take the lock.
    pub fn retry_interval(&self) -> Duration {
        self.retry_interval
    }
    /// The upper bound of random jitter added to each retry.
    pub fn retry_jitter(&self) -> Duration {
        self.retry_jitter
    }
    /// The assumed maximum drift rate between a node's clock and the
    /// database's.
    pub fn max_drift(&self) -> f64 {
        self.max_drift
    }
    /// Subtracted from every local deadline.
    pub fn safety_margin(&self) -> Duration {
        self.safety_margin
    }
    /// What a new holder does while the predecessor's lease runs.
    pub fn takeover_policy(&self) -> TakeoverPolicy {
        self.takeover_policy
    }
    /// Whether candidates terminate the backend of a holder whose lease has
    /// expired by more than [`Config::zombie_grace`].
    pub fn preempt_zombies(&self) -> bool {
        self.preempt_zombies
    }
    /// How long past its lease a holder may keep the lock before it counts
    /// as a zombie.
    pub fn zombie_grace(&self) -> Duration {
        self.zombie_grace
    }
    /// How long resign/shutdown waits for leader-only work to finish before
    /// releasing the lease anyway.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// `lease_duration·(1-max_drift) - safety_margin`: how long after
    /// *sending* a successful claim or renew a node may act as leader.
    pub fn leader_window(&self) -> Duration {
        self.lease_duration
            .mul_f64(1.0 - self.max_drift)
            .saturating_sub(self.safety_margin)
    }

    /// How long to wait on the local clock so that at least `db` has passed
    /// on the database clock, allowing for drift, plus the safety margin.
    pub fn local_wait_for_db(&self, db: Duration) -> Duration {
        if db.is_zero() {
            return Duration::ZERO;
        }
        db.div_f64(1.0 - self.max_drift) + self.safety_margin
    }
}

/// Builds a [`Config`]; every setter takes the value as is and
/// [`ConfigBuilder::build`] checks them together.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl ConfigBuilder {
    setter!(
        /// See [`Config::lease_duration`]. Default 10 s.
        lease_duration: Duration
    );
    setter!(
        /// See [`Config::renew_interval`]. Default 2 s; must be < lease/2.
        renew_interval: Duration
    );
    setter!(
        /// See [`Config::attempt_timeout`]. Default 1.5 s; must be < lease/2.
        attempt_timeout: Duration
    );
    setter!(
        /// See [`Config::validate_interval`]. Default 1 s.
        validate_interval: Duration
    );
    setter!(
        /// See [`Config::keepalive_interval`]. Default 5 s.
        keepalive_interval: Duration
    );
    setter!(
        /// See [`Config::retry_interval`]. Default 1 s.
        retry_interval: Duration
    );
    setter!(
        /// See [`Config::retry_jitter`]. Default 250 ms; at most the retry
        /// interval.
        retry_jitter: Duration
    );
    setter!(
        /// See [`Config::max_drift`]. Default 1e-3; in [0, 0.1).
        max_drift: f64
    );
    setter!(
        /// See [`Config::safety_margin`]. Default 200 ms.
        safety_margin: Duration
    );
    setter!(
        /// See [`TakeoverPolicy`]. Default `WaitForLease`.
        takeover_policy: TakeoverPolicy
    );
    setter!(
        /// See [`Config::preempt_zombies`]. Default off.
        preempt_zombies: bool
    );
    setter!(
        /// See [`Config::zombie_grace`]. Default 5 s.
        zombie_grace: Duration
    );
    setter!(
        /// See [`Config::drain_timeout`]. Default 5 s.
        drain_timeout: Duration
    );

    /// Validates and returns the config.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that breaks a rule.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.lease_duration(), Duration::from_secs(10));
        assert_eq!(c.renew_interval(), Duration::from_secs(2));
        assert_eq!(c.validate_interval(), Duration::from_secs(1));
        assert_eq!(c.retry_interval(), Duration::from_secs(1));
        assert_eq!(c.takeover_policy(), TakeoverPolicy::WaitForLease);
        // 10 s · 0.999 - 0.2 s
        assert_eq!(c.leader_window(), Duration::from_millis(9790));
    }

    fn field_of(b: ConfigBuilder) -> &'static str {
        b.build().unwrap_err().field
    }

    #[test]
    fn rules_name_their_field() {
        let s = Duration::from_secs;
        assert_eq!(
            field_of(Config::builder().lease_duration(s(0))),
            "lease_duration"
        );
        assert_eq!(
            field_of(Config::builder().renew_interval(s(5))),
            "renew_interval"
        );
        assert_eq!(
            field_of(Config::builder().attempt_timeout(s(5))),
            "attempt_timeout"
        );
        assert_eq!(
            field_of(Config::builder().validate_interval(s(0))),
            "validate_interval"
        );
        assert_eq!(
            field_of(Config::builder().retry_jitter(s(2))),
            "retry_jitter"
        );
        assert_eq!(field_of(Config::builder().max_drift(0.5)), "max_drift");
        assert_eq!(field_of(Config::builder().max_drift(f64::NAN)), "max_drift");
        assert_eq!(
            field_of(Config::builder().safety_margin(s(8))),
            "safety_margin"
        );
        assert_eq!(
            field_of(
                Config::builder()
                    .preempt_zombies(true)
                    .zombie_grace(Duration::ZERO)
            ),
            "zombie_grace"
        );
        let msg = Config::builder()
            .renew_interval(s(5))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("renew_interval") && msg.contains("half"),
            "{msg}"
        );
    }

    #[test]
    fn policies_parse_by_name() {
        for p in [TakeoverPolicy::WaitForLease, TakeoverPolicy::Immediate] {
            assert_eq!(p.name().parse::<TakeoverPolicy>(), Ok(p));
        }
        assert_eq!("wait".parse(), Ok(TakeoverPolicy::WaitForLease));
        assert!("eventually".parse::<TakeoverPolicy>().is_err());
    }

    #[test]
    fn local_wait_covers_drift() {
        let c = Config::default();
        let w = c.local_wait_for_db(Duration::from_secs(10));
        // 10 s / 0.999 + 0.2 s > 10.2 s
        assert!(w > Duration::from_millis(10_200));
        assert_eq!(c.local_wait_for_db(Duration::ZERO), Duration::ZERO);
    }
}
