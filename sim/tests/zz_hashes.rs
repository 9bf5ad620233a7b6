mod common;
use regent_sim::{Mutant, TakeoverPolicy, run};
#[test]
fn print_hashes() {
    for seed in 0..60 {
        let mut config = common::ci_config(seed);
        if seed % 4 == 1 {
            config.policy = TakeoverPolicy::Immediate;
        }
        if seed % 4 == 2 {
            config.mutant = Some(Mutant::ALL[(seed / 4) as usize % Mutant::ALL.len()]);
        }
        let a = run(&config);
        println!("HASH {seed} {:016x}", a.log_hash);
    }
}
