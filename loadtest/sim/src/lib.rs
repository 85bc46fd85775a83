//! A simulated DLMS/COSEM meter fleet, on the project's own codec (`headend-core`).
//!
//! `headend-sim --fleet DIR` runs the meters of `DIR/meters.csv` (written by
//! `python -m loadtest grid`) as TCP clients of a head-end: each pushes its interval
//! readings and alarms and answers the head-end's requests on the same connection.
//! See [`run`] for the options and `loadtest/README.md` for the whole picture.
//!
//! - [`model`]: what a consumer consumes, in closed form (exact at any time, in any
//!   process);
//! - [`fleet`]: meters.csv, grid.csv and the ground truth, split into partitions;
//! - [`grid`]: what the balance meters measure;
//! - [`cosem`]: one meter's objects, pushes and xDLMS server;
//! - [`link`]: the wrapper and HDLC framing of a connection;
//! - [`run`]: the connections, the clock, faults, statistics.

pub mod cosem;
pub mod fleet;
pub mod grid;
pub mod image;
pub mod link;
pub mod model;
pub mod run;
