//! Route matching with nginx's precedence: an `exact` route, else the longest `path`
//! prefix if it has `prefix_wins` (nginx `^~`), else the first `regex` route in file
//! order, else the longest prefix.
//!
//! The cost does not grow with the number of routes: exact paths are one hash lookup,
//! prefixes one walk down a byte trie (as long as the path), and every regex is tried in
//! one pass of a [`regex::RegexSet`]; only the winning regex runs again, for its
//! captures, and only when the route uses them.

use std::collections::HashMap;

use portico_config::RouteMatch;

use crate::vars::Captures;

/// The routes of one listener, by how they match.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, usize>,
    trie: Trie,
    regexes: Option<regex::RegexSet>,
    /// The route of each regex in `regexes`, its compiled form, and whether its captures
    /// are needed.
    regex_routes: Vec<(usize, regex::Regex, bool)>,
    names: HashMap<String, usize>,
}

/// Which route a path matched, with the regex's captures when the route uses them.
#[derive(Debug)]
pub struct Found {
    pub route: usize,
    pub captures: Option<Captures>,
}

impl Router {
    /// `routes`: each route's matcher, name, and whether its templates use captures;
    /// indices are the routes' places in the listener.
    pub fn new<'a>(
        routes: impl IntoIterator<Item = (&'a RouteMatch, Option<&'a str>, bool)>,
    ) -> Result<Self, String> {
        let mut r = Router::default();
        let mut patterns = Vec::new();
        for (i, (m, name, wants_captures)) in routes.into_iter().enumerate() {
            if let Some(n) = name {
                r.names.insert(n.to_string(), i);
            }
            match m {
                RouteMatch::Exact(p) => {
                    r.exact.entry(p.clone()).or_insert(i);
                }
                RouteMatch::Prefix { path, wins } => r.trie.insert(path.as_bytes(), i, *wins),
                RouteMatch::Regex { source, .. } => {
                    let re =
                        regex::Regex::new(source).map_err(|e| format!("regex {source:?}: {e}"))?;
                    patterns.push(source.clone());
                    r.regex_routes.push((i, re, wants_captures));
                }
                RouteMatch::Named => {}
            }
        }
        if !patterns.is_empty() {
            r.regexes = Some(regex::RegexSet::new(&patterns).map_err(|e| e.to_string())?);
        }
        Ok(r)
    }

    /// The route named `name` (`@name` in try_files).
    pub fn named(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    /// The route for `path` (the normalized request path).
    pub fn find(&self, path: &str) -> Option<Found> {
        if let Some(&route) = self.exact.get(path) {
            return Some(Found {
                route,
                captures: None,
            });
        }
        let prefix = self.trie.longest(path.as_bytes());
        if let Some((route, true)) = prefix {
            return Some(Found {
                route,
                captures: None,
            });
        }
        if let Some(set) = &self.regexes {
            if let Some(first) = set.matches(path).iter().next() {
                let (route, re, wants) = &self.regex_routes[first];
                return Some(Found {
                    route: *route,
                    captures: if *wants { Captures::of(re, path) } else { None },
                });
            }
        }
        prefix.map(|(route, _)| Found {
            route,
            captures: None,
        })
    }
}

/// Path prefixes in a byte trie: the longest prefix of a path is one walk down it.
#[derive(Debug, Default)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by next byte, sorted.
    next: Vec<(u8, u32)>,
    /// The route whose prefix ends here, and whether it has `prefix_wins`.
    route: Option<(usize, bool)>,
}

impl Trie {
    fn insert(&mut self, key: &[u8], route: usize, wins: bool) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0usize;
        for &b in key {
            let found = self.nodes[at].next.binary_search_by_key(&b, |&(c, _)| c);
            at = match found {
                Ok(k) => self.nodes[at].next[k].1 as usize,
                Err(k) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].next.insert(k, (b, id as u32));
                    id
                }
            };
        }
        // The first route with a prefix keeps it (the config refuses duplicates).
        self.nodes[at].route.get_or_insert((route, wins));
    }

    fn longest(&self, path: &[u8]) -> Option<(usize, bool)> {
        let mut node = self.nodes.first()?;
        let mut best = node.route;
        for &b in path {
            let Ok(k) = node.next.binary_search_by_key(&b, |&(c, _)| c) else {
                break;
            };
            node = &self.nodes[node.next[k].1 as usize];
            if node.route.is_some() {
                best = node.route;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefix(p: &str, wins: bool) -> RouteMatch {
        RouteMatch::Prefix {
            path: p.into(),
            wins,
        }
    }

    fn regex(r: &str) -> RouteMatch {
        RouteMatch::Regex {
            source: r.into(),
            captures: regex::Regex::new(r).unwrap().captures_len() - 1,
        }
    }

    fn router(ms: &[RouteMatch]) -> Router {
        Router::new(ms.iter().map(|m| (m, None, true))).unwrap()
    }

    #[test]
    fn precedence_is_nginxs() {
        let r = router(&[
            prefix("/", false),
            prefix("/static/", true),
            regex(r"\.php$"),
            prefix("/app/", false),
            RouteMatch::Exact("/app/x.php".into()),
            regex(r"(?i)\.PNG$"),
            prefix("/app/deep/", false),
        ]);
        let at = |p: &str| r.find(p).map(|f| f.route);
        assert_eq!(at("/app/x.php"), Some(4), "exact first");
        assert_eq!(at("/static/a.php"), Some(1), "^~ beats regexes");
        assert_eq!(at("/app/y.php"), Some(2), "a regex beats a plain prefix");
        assert_eq!(
            at("/app/deep/a.png"),
            Some(5),
            "regexes in file order, (?i)"
        );
        assert_eq!(at("/app/deep/a"), Some(6), "the longest prefix");
        assert_eq!(at("/other"), Some(0));
        let none = router(&[prefix("/a/", false)]);
        assert!(none.find("/b").is_none());
    }

    #[test]
    fn captures_come_from_the_winning_regex() {
        let r = router(&[regex(r"^/old/(.*)/(\d+)$")]);
        let f = r.find("/old/news/42").unwrap();
        let c = f.captures.unwrap();
        assert_eq!((c.get(1), c.get(2), c.get(3)), ("news", "42", ""));
    }

    /// nginx's rule, written the slow obvious way.
    fn reference(ms: &[RouteMatch], path: &str) -> Option<usize> {
        if let Some(i) = ms
            .iter()
            .position(|m| matches!(m, RouteMatch::Exact(p) if p == path))
        {
            return Some(i);
        }
        let longest = ms
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match m {
                RouteMatch::Prefix { path: p, wins } if path.starts_with(p.as_str()) => {
                    Some((p.len(), i, *wins))
                }
                _ => None,
            })
            .max_by_key(|&(len, i, _)| (len, std::cmp::Reverse(i)));
        if let Some((_, i, true)) = longest {
            return Some(i);
        }
        for (i, m) in ms.iter().enumerate() {
            if let RouteMatch::Regex { source, .. } = m {
                if regex::Regex::new(source).unwrap().is_match(path) {
                    return Some(i);
                }
            }
        }
        longest.map(|(_, i, _)| i)
    }

    fn a_match() -> impl Strategy<Value = RouteMatch> {
        prop_oneof![
            ("/[ab]{0,3}/?", any::<bool>()).prop_map(|(p, w)| prefix(&p, w)),
            "/[ab]{0,3}".prop_map(RouteMatch::Exact),
            prop_oneof![Just(r"a$"), Just(r"^/b"), Just(r"ab"), Just(r"(?i)B/")].prop_map(regex),
        ]
    }

    proptest! {
        #[test]
        fn precedence_matches_a_reference_of_nginxs_rule(
            ms in proptest::collection::vec(a_match(), 1..12),
            paths in proptest::collection::vec("/[ab/]{0,6}", 1..20),
        ) {
            // the config refuses duplicate prefixes and exact paths: so does this input
            let mut seen = std::collections::HashSet::new();
            let ms: Vec<RouteMatch> = ms
                .into_iter()
                .filter(|m| match m {
                    RouteMatch::Prefix { path, .. } => seen.insert(format!("p{path}")),
                    RouteMatch::Exact(p) => seen.insert(format!("e{p}")),
                    _ => true,
                })
                .collect();
            let r = router(&ms);
            for p in &paths {
                prop_assert_eq!(r.find(p).map(|f| f.route), reference(&ms, p), "{}", p);
            }
        }
    }
}
