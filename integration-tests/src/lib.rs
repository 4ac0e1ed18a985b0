//! Parley's integration tests live in `tests/`: they start the services
//! in-process on port 0 against real databases and talk to them over real gRPC.
//! This library is empty on purpose.

#![forbid(unsafe_code)]
