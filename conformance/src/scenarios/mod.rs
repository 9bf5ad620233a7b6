//! The scenarios, one public async function each, generic over an
//! [`Engine`](crate::Engine). Run them through [`run`](crate::run) or
//! [`conformance_tests!`](crate::conformance_tests).

pub mod election;
pub mod fenced;
pub mod names;
