//! What the relay sees of the local Docker Engine: running containers and
//! the routes their labels ask for ([`labels`]), read over the engine's
//! unix socket with the API version both sides speak ([`engine`]).

pub mod engine;
pub mod error;
pub mod labels;

pub use engine::{Container, Engine, Event, Health, News};
pub use error::{Error, Result};
pub use labels::{LabelRoute, routes_of};
