//! Replay of captured requests to mirror services.
