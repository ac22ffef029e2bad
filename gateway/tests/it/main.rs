//! The integration tests of `mfe-gateway`, one binary, one module per former test file: the
//! front door's defences, memory under 100 MB transfers, the reverse proxy, a Python WebSocket
//! client, replicas and `/ws`. Each test joins its module's `mfe_testkit::serial::group`, so the
//! tests of one module run side by side and never beside another module's, as when each file
//! was its own binary. `memory` measures the resident memory of a spawned `mfe-gateway` child
//! process (/proc/<child pid>/status), not of this one, so it can share the binary.

mod common;
mod front_door;
mod memory;
mod proxy;
mod python_client;
mod replicas;
mod websocket;
