//! `headend-sim`: a simulated meter fleet (see the library documentation and
//! `headend-sim --help`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match headend_sim::run::Options::parse(&args) {
        Ok(None) => {
            print!("{}", headend_sim::run::USAGE);
        }
        Ok(Some(opts)) => {
            if let Err(e) = headend_sim::run::run(opts) {
                eprintln!("headend-sim: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("headend-sim: {e}\n(headend-sim --help lists the options)");
            std::process::exit(2);
        }
    }
}
