//! What the relay sees of the local Docker Engine, and what it runs there:
//! running containers and the routes their labels ask for ([`labels`]),
//! read over the engine's unix socket with the API version both sides
//! speak ([`engine`]), and compose projects through the compose CLI
//! ([`compose`]).

pub mod compose;
pub mod engine;
pub mod error;
pub mod labels;
pub mod services;

pub use engine::{Container, Engine, Event, Health, News};
pub use error::{Error, Result};
pub use labels::{LabelRoute, routes_of};
pub use services::{Readiness, ServiceHealth, ServiceState};
