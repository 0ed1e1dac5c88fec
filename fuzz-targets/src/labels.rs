//! Container labels: any image can carry any label, so the routes they ask
//! for are hostile input (see `deploy::labels` and `relay::containers`).

use std::collections::BTreeMap;

use deploy::labels::{MAX_ROUTES_PER_CONTAINER, routes_of};
use deploy::{Container, Health};

/// The first line is the exposed ports (comma-separated), each further
/// line one `key=value` label.
pub fn labels(data: &[u8]) {
    let text = crate::text(data);
    let mut lines = text.split('\n');
    let exposed: Vec<u16> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let labels: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let (routes, problems) = routes_of(&labels, &exposed);
    assert!(routes.len() <= MAX_ROUTES_PER_CONTAINER);
    for r in &routes {
        assert!(r.port > 0);
        assert_eq!(r.host, r.host.to_ascii_lowercase());
    }
    // What the relay makes of them: every route it keeps is one it would
    // store unchanged, targeting the container.
    let container = Container {
        id: "c".into(),
        name: "c".into(),
        labels,
        address: Some([10, 0, 0, 1].into()),
        exposed,
        health: Health::None,
        created: String::new(),
    };
    let (wanted, left_out) = relay::containers::desired(std::slice::from_ref(&container));
    // Each route asked for is kept or left out with a reason, and so is
    // each problem: nothing is dropped without a word.
    assert_eq!(wanted.len() + left_out.len(), routes.len() + problems.len());
    for ((host, path), new) in wanted {
        let mut again = new.clone();
        relay::model::validate(&mut again).expect("a kept label route validates");
        assert_eq!(again, new, "validation is a fixed point");
        assert_eq!((host, path), (new.host.clone(), new.path.clone()));
        assert!(new.target.starts_with("http://10.0.0.1:"), "{}", new.target);
        assert_eq!(new.owner.as_deref(), Some("container:c"));
    }
}
