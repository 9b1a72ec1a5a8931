//! mirror-agent command line entry point.

fn main() {
    println!("mirror-agent: not wired yet");
}
