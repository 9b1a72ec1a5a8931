//! `cargo xtask`: project tasks.

fn main() {
    println!("xtask: not wired yet");
}
