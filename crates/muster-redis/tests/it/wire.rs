//! Titan wire compatibility.
