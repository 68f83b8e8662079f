//! Fixtures for the crate's unit tests.

use rafael_config::Config;

/// `routes` (`[[routes]]` tables, TOML) on a listener `in` and an upstream `app` at
/// 127.0.0.1:9 (nothing listens there).
pub fn config(routes: &str) -> Config {
    let text = format!(
        r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9"]
{routes}"#
    );
    rafael_config::parse(&text).unwrap_or_else(|errors| panic!("{errors}:\n{text}"))
}

/// [`config`] with one plain route named `name`.
pub fn one_route(name: &str) -> Config {
    config(&format!(
        "[[routes]]\nname = \"{name}\"\nlistener = \"in\"\nupstream = \"app\"\n"
    ))
}
