//! Each service's command line has what its kind needs: the three with a
//! database have `migrate` and the database flags, presence and the gateway
//! neither.

use clap::Parser;

/// Whether `C` parses `args` (after the binary's name).
fn parses<C: Parser>(args: &[&str]) -> bool {
    let args = std::iter::once("parley").chain(args.iter().copied());
    parley_server::runner::config_from_args::<C, _, _>(args).is_ok()
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

/// Every `PARLEY_*` variable a service reads, with its default as `--help`
/// shows it (values joined by `,`), from the five command lines themselves.
fn variables_in_help() -> std::collections::BTreeMap<String, Option<String>> {
    use clap::CommandFactory;
    let commands = [
        parley_gateway::Cli::command(),
        parley_message::Cli::command(),
        parley_presence::Cli::command(),
        parley_receipt::Cli::command(),
        parley_notification::Cli::command(),
    ];
    let mut found = std::collections::BTreeMap::new();
    for command in &commands {
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = (!defaults.is_empty()).then(|| defaults.join(","));
            let name = env.to_string_lossy().into_owned();
            if let Some(other) = found.insert(name.clone(), default.clone()) {
                assert_eq!(
                    other, default,
                    "{name} has two defaults across the services"
                );
            }
        }
    }
    found
}

/// `PARLEY_{A,B}_X` as its variables, and a default such as `5005{1,2}` as
/// one value per variable.
fn expand(text: &str) -> Vec<String> {
    match (text.find('{'), text.find('}')) {
        (Some(open), Some(close)) if open < close => text[open + 1..close]
            .split(',')
            .map(|part| format!("{}{part}{}", &text[..open], &text[close + 1..]))
            .collect(),
        _ => vec![text.to_owned()],
    }
}

/// The defaults a README cell gives, in order: `a`, `b` for two variables
/// (or one for all of them), `unset …` or `random` for none, plain numbers
/// where the cell has no backticks.
fn defaults_in(cell: &str) -> Vec<Option<String>> {
    let none = |text: &str| {
        ["unset", "random", "one required"]
            .iter()
            .any(|n| text.starts_with(n))
    };
    if !cell.contains('`') {
        if none(cell) {
            return vec![None];
        }
        return cell.split(", ").map(|v| Some(v.to_owned())).collect();
    }
    let mut defaults = Vec::new();
    for (i, part) in cell.split('`').enumerate() {
        if i % 2 == 1 {
            defaults.extend(expand(part).into_iter().map(Some));
        } else if part.split(',').any(|p| none(p.trim())) {
            defaults.push(None);
        }
    }
    defaults
}

/// The rows of README's configuration tables: each variable with what the
/// README says its default is (`None` for unset, random or required).
fn variables_in_readme() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Configuration")
        .expect("a Configuration section");
    let section = &readme[start..];
    let end = section[1..].find("\n## ").map_or(section.len(), |i| i + 1);
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut rows = Vec::new();
    for line in section[..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let names: Vec<String> = ticked(cells[1])
            .iter()
            .filter(|n| n.starts_with("PARLEY_"))
            .flat_map(|n| expand(n))
            .collect();
        if names.is_empty() {
            // OTEL_*: read by the OpenTelemetry SDK, not a flag of ours.
            continue;
        }
        let defaults = defaults_in(cells[2]);
        assert!(
            defaults.len() == names.len() || names.len() > 1 && defaults.len() == 1,
            "README row {line:?}: {} variables, {} defaults",
            names.len(),
            defaults.len()
        );
        for (i, name) in names.into_iter().enumerate() {
            let default = defaults.get(i).or(defaults.first()).cloned().flatten();
            rows.push((name, default));
        }
    }
    rows
}

/// The README's configuration tables list every variable the services read,
/// no variable they do not, and each default as `--help` gives it.
#[test]
fn the_readme_configuration_tables_match_the_command_lines() {
    let help = variables_in_help();
    let readme = variables_in_readme();
    let listed: std::collections::BTreeSet<&str> =
        readme.iter().map(|(name, _)| name.as_str()).collect();
    let unlisted: Vec<&String> = help
        .keys()
        .filter(|name| !listed.contains(name.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "read by a service but not in README: {unlisted:?}"
    );
    let mut wrong = Vec::new();
    for (name, default) in &readme {
        let Some(shown) = help.get(name) else {
            panic!("README lists {name}, which no service reads");
        };
        let (said, shown) = (
            default.as_deref().map(|d| d.replace(' ', "")),
            shown.as_deref().map(|d| d.replace(' ', "")),
        );
        if said != shown {
            wrong.push(format!("{name}: README {said:?}, --help {shown:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "defaults that differ:\n{}",
        wrong.join("\n")
    );
}
