//! The C allocator's arenas on SQLite. glibc gives each thread that allocates while another
//! holds an arena an arena of its own, up to eight per core, and each keeps the memory freed in
//! it for reuse. On SQLite every pooled connection is a thread of its own: with ten, a
//! marketing-status of a million contacts peaked at 108-123 MB under read load, against 52-57 MB
//! with one arena, for about a fifth of SQLite's peak read rate (BENCHMARKS.md). PostgreSQL
//! connections are sockets served by the runtime's own threads, so there nothing is capped.

/// Whether the operator chose the arenas (`MALLOC_ARENA_MAX` a number above 0, or
/// `GLIBC_TUNABLES` naming `arena_max`): their choice stands. glibc ignores an empty or unreadable
/// `MALLOC_ARENA_MAX`, and so does this.
fn chosen(var: impl Fn(&str) -> Option<String>) -> bool {
    var("MALLOC_ARENA_MAX").and_then(|v| v.trim().parse::<u32>().ok()).is_some_and(|n| n > 0)
        || var("GLIBC_TUNABLES").is_some_and(|t| t.contains("arena_max"))
}

/// Caps glibc's arenas at one for a service whose database is SQLite, unless the operator set
/// them; true when capped. Called before any other thread starts: once glibc has made more than
/// eight arenas it settles its limit, and a later cap is ignored.
pub fn cap_for(database_url: &str) -> bool {
    if !database_url.starts_with("sqlite:") || chosen(|v| std::env::var(v).ok()) {
        return false;
    }
    cap()
}

/// Says at start-up that the arenas were capped, once logging runs.
pub fn announce(capped: bool) {
    if capped {
        tracing::info!(
            "SQLite: the allocator keeps one arena (MALLOC_ARENA_MAX or GLIBC_TUNABLES arena_max overrides)"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap() -> bool {
    // SAFETY: mallopt only sets a parameter of the allocator, which takes its own lock.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_choice_of_arenas_stands() {
        let env = |pairs: &[(&'static str, &'static str)]| {
            let pairs = pairs.to_vec();
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(!chosen(env(&[])));
        assert!(chosen(env(&[("MALLOC_ARENA_MAX", "4")])));
        for ignored in ["", "abc", "0"] {
            assert!(!chosen(env(&[("MALLOC_ARENA_MAX", ignored)])), "{ignored:?}");
        }
        assert!(chosen(env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")])));
        assert!(!chosen(env(&[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")])));
    }

    #[test]
    fn postgres_services_keep_the_allocators_arenas() {
        assert!(!cap_for("postgres://localhost/test"));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn sqlite_services_cap_them_unless_the_operator_chose() {
        let chose = chosen(|v| std::env::var(v).ok());
        assert_eq!(cap_for("sqlite://data/marketing-status.db"), !chose);
    }
}
