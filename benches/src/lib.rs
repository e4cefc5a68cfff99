//! Benchmarks of the broker: criterion benches of the engine in `benches/`.
