//! `nvidia-ctk`: the admin's tool.
fn main() {
    eprintln!("nvidia-ctk: not implemented yet");
    std::process::exit(1);
}
