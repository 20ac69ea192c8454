//! tokun
