//! The mesh as data, with no I/O: workloads, services and their names, and the policy model
//! with its L4 evaluation.
//! The agent's data path, and anything that explains a decision (`weftctl`), call the same
//! code here, so a rule means the same everywhere.

pub mod dns;
pub mod lb;
pub mod policy;
pub mod service;
pub mod workload;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
