//! Request recording as JSON lines (`--record`) and reading recordings back (`--from`).
