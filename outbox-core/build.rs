// The migrations are embedded with `sqlx::migrate!`: a new or changed file there must rebuild
// this crate, which cargo does not notice by itself.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
