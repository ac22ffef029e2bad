//! `mfe test chaos`: a bounded workload through the front door while a fault schedule runs, and
//! the [`history`] checker that judges what every client saw and every database holds.

pub mod history;
