//! The relay dashboard in a real (headless) browser.

use std::time::Duration;

use harness::browser::Browser;
use harness::{Backend, TestNet};
use http::StatusCode;

#[tokio::test]
async fn add_a_route_through_the_dashboard_form_and_see_it_listed_and_live() {
    let Some(browser) = Browser::launch().await.unwrap() else {
        return;
    };
    let (a, b) = (Backend::start().await, Backend::start().await);
    let net = TestNet::builder()
        .key("a", &["*.site.test"])
        .relay("a", &[("app.site.test", &a.url())])
        .start()
        .await
        .unwrap();
    let relay = &net.relays[0];
    let mut page = browser.dashboard(relay, &net.dir.path().join("relay-0")).await.unwrap();

    // The page lists the seeded route and shows the gateway as connected.
    let listed = page
        .wait_for(
            "document.querySelector('#routes tbody').innerText",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(listed.as_str().unwrap().contains("app.site.test"), "{listed}");
    let gateways = page
        .wait_for("document.querySelector('#gateways').innerText", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(gateways.as_str().unwrap().contains("quic"), "{gateways}");
    assert_eq!(
        page.eval("location.hash").await.unwrap(),
        "",
        "the token is taken out of the address bar"
    );

    // Fill in the form and submit it like a user would.
    let submit = format!(
        "(() => {{ const f = document.querySelector('#add-route');
            f.elements.host.value = 'ui.site.test';
            f.elements.path.value = '/';
            f.elements.target.value = '{}';
            f.requestSubmit();
            return true; }})()",
        b.url()
    );
    page.eval(&submit).await.unwrap();
    let row = page
        .wait_for(
            "[...document.querySelectorAll('#routes tbody tr')].map(r => r.innerText).find(t => t.includes('ui.site.test'))",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(row.as_str().unwrap().contains(&b.url()), "{row}");
    let history = page
        .wait_for(
            "document.querySelector('#history tbody').innerText",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(history.as_str().unwrap().contains("add ui.site.test"), "{history}");
    assert_eq!(
        page.eval("document.querySelector('#error').textContent").await.unwrap(),
        ""
    );

    // And the route is live at the gateway.
    let live = harness::wait_until(Duration::from_secs(5), || async {
        net.client()
            .get("ui.site.test", "/")
            .await
            .ok()
            .filter(|r| r.status == StatusCode::OK)
    })
    .await;
    assert!(live.is_some());
    assert_eq!(b.hits(), 1);

    // A bad submission shows the API's message on the page.
    page.eval("(() => { const f = document.querySelector('#add-route'); f.elements.host.value = 'ui.site.test'; f.elements.target.value = '1234'; f.requestSubmit(); return true })()")
        .await
        .unwrap();
    let error = page
        .wait_for("document.querySelector('#error').textContent", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(error.as_str().unwrap().contains("already exists"), "{error}");
}

#[tokio::test]
async fn a_route_the_gateway_refuses_shows_as_refused_on_the_dashboard() {
    let Some(browser) = Browser::launch().await.unwrap() else {
        return;
    };
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("a", &["*.site.test"])
        .relay("a", &[("app.site.test", &backend.url())])
        .start()
        .await
        .unwrap();
    let relay = &net.relays[0];
    let mut page = browser.dashboard(relay, &net.dir.path().join("relay-0")).await.unwrap();
    page.wait_for(
        "document.querySelector('#routes tbody').innerText.includes('app.site.test') || null",
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // A host the relay's key may not serve, added through the form.
    let submit = format!(
        "(() => {{ const f = document.querySelector('#add-route');
            f.elements.host.value = 'elsewhere.test';
            f.elements.target.value = '{}';
            f.requestSubmit();
            return true; }})()",
        backend.url()
    );
    page.eval(&submit).await.unwrap();
    let error = page
        .wait_for(
            "document.querySelector('#error').textContent || null",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let error = error.as_str().unwrap().to_owned();
    assert!(
        error.contains("not live") && error.contains("may not serve elsewhere.test"),
        "{error}"
    );
    let row = page
        .wait_for(
            "[...document.querySelectorAll('#routes tbody tr')].map(r => r.innerText).find(t => t.includes('elsewhere.test') && t.includes('refused'))",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(row.as_str().unwrap().contains("may not serve elsewhere.test"), "{row}");
    let app = page
        .eval("[...document.querySelectorAll('#routes tbody tr')].map(r => r.innerText).find(t => t.includes('app.site.test'))")
        .await
        .unwrap();
    assert!(!app.as_str().unwrap().contains("refused"), "{app}");
}
