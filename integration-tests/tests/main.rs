//! Integration tests: one binary, one fresh database per service per test, every
//! service on port 0, real gRPC in between.

mod client_api;
mod commands;
mod device;
mod faults;
mod layers;
mod malformed;
mod matrix;
mod outage;
mod push;
mod realtime;
mod scenario;
mod shutdown;
mod support;
mod telemetry;
mod websocket;
mod wire;
