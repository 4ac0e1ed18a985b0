//! Integration tests: one binary, one fresh database per service per test, every
//! service on port 0, real gRPC in between.

mod malformed;
mod outage;
mod scenario;
mod support;
