//! Each service's command line has what its kind needs: the three with a
//! database have `migrate` and the database flags, presence and the gateway
//! neither.

use clap::Parser;

/// Whether `C` parses `args` (after the binary's name).
fn parses<C: Parser>(args: &[&str]) -> bool {
    C::try_parse_from(std::iter::once("parley").chain(args.iter().copied())).is_ok()
}

fn has_migrate_and_database_flags<C: Parser>() -> bool {
    parses::<C>(&["migrate"]) && parses::<C>(&["--db-max-connections", "4"])
}

fn has_neither<C: Parser>() -> bool {
    parses::<C>(&[])
        && !parses::<C>(&["migrate"])
        && !parses::<C>(&["--db-max-connections", "4"])
        && !parses::<C>(&["--migrate-on-start", "false"])
}

#[test]
fn only_the_services_with_a_database_have_migrate_and_its_flags() {
    assert!(has_migrate_and_database_flags::<parley_message::Cli>());
    assert!(has_migrate_and_database_flags::<parley_receipt::Cli>());
    assert!(has_migrate_and_database_flags::<parley_notification::Cli>());
    assert!(has_neither::<parley_presence::Cli>());
    assert!(has_neither::<parley_gateway::Cli>());
}
