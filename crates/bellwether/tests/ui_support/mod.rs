//! The dashboard's browser harness: headless Debian Chromium driven over WebDriver
//! (`fantoccini`) through `/usr/bin/chromedriver`, which the harness starts on a free port.
//! Used by tests/ui_browser.rs and tests/ui_kinds_browser.rs (`mod ui_support;`).
//!
//! Every wait is a WebDriver wait on an element (by CSS or by XPath with the text it must
//! contain), bounded by [`WAIT`] only so that a broken page fails the test instead of hanging
//! it; nothing here sleeps.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

/// Where Debian's `chromium-driver` installs chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Debian's `chromium` installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The longest any one wait for the page may take before the test fails (a hang guard, not a
/// timing assertion: the sandbox's rollout steps take seconds on a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(90);

/// A headless Chromium and its chromedriver; both are stopped on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium with a fresh profile.
    /// Fails with the install command when either is missing.
    pub async fn start() -> Browser {
        for (path, what) in [(CHROMEDRIVER, "chromedriver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} ({what}) is missing: the dashboard's browser tests need Debian's headless \
                 Chromium and its WebDriver; install it: apt-get install -y chromium chromium-driver"
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {CHROMEDRIVER}: {e}; install it: apt-get install -y chromium chromium-driver")
            });
        // chromedriver says on stdout when it listens; wait for that line, not for a time.
        let stdout = driver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if !sent && line.contains("started successfully") {
                    let _ = tx.send(Ok(()));
                    sent = true;
                } else if !sent {
                    let _ = tx.send(Err(line));
                }
            }
            if !sent {
                let _ = tx.send(Err("chromedriver exited".into()));
            }
        });
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(WAIT) {
                Ok(Ok(())) => break,
                Ok(Err(line)) if line != "chromedriver exited" => said.push(line),
                other => {
                    let _ = driver.kill();
                    panic!(
                        "chromedriver did not start ({other:?}); it said:\n{}",
                        said.join("\n")
                    );
                }
            }
        }
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1400".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"binary": CHROMIUM, "args": args}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = driver.kill();
                panic!("chromedriver could not start Chromium: {e}");
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens the dashboard at `base` (`http://HOST:PORT`) and signs in with `token`; returns
    /// once the header shows the token's role.
    pub async fn sign_in(&self, base: &str, token: &str, role: &str) {
        self.client.goto(&format!("{base}/ui")).await.unwrap();
        self.sign_in_here(token, role).await;
    }

    /// Signs in on the open dashboard (its sign-in form must be showing or coming).
    pub async fn sign_in_here(&self, token: &str, role: &str) {
        let input = self.css("[data-test=token-input]").await;
        input.send_keys(token).await.unwrap();
        self.css("[data-test=login-submit]")
            .await
            .click()
            .await
            .unwrap();
        self.text("[data-test=role]", role).await;
    }

    /// Signs out (the sign-in form shows again).
    pub async fn sign_out(&self) {
        self.css("[data-test=logout]").await.click().await.unwrap();
        self.css("[data-test=token-input]").await;
    }

    /// Goes to a route of the open dashboard (`#/rollouts/ID`) without reloading the page.
    pub async fn route(&self, hash: &str) {
        self.client
            .execute(
                "location.hash = arguments[0]; return null;",
                vec![serde_json::Value::String(hash.to_string())],
            )
            .await
            .unwrap();
    }

    /// Waits for an element matching `css` and returns it.
    pub async fn css(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!(
                "no element {css} appeared ({e}); the page shows:\n{}",
                self.page_text().await
            ),
        }
    }

    /// Waits for an element matching `css` whose text contains `text`; returns its text.
    pub async fn text(&self, css: &str, text: &str) -> String {
        let xpath = format!(
            "{}[contains(normalize-space(.), {})]",
            css_to_xpath(css),
            xpath_literal(text)
        );
        // A page re-renders on live events, so the element found may be replaced before its
        // text is read (a stale element): find it again until the wait's time is up.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match self
                .client
                .wait()
                .at_most(deadline.saturating_duration_since(std::time::Instant::now()))
                .for_element(Locator::XPath(&xpath))
                .await
            {
                Ok(e) => match e.text().await {
                    Ok(t) => return t,
                    Err(_) if std::time::Instant::now() < deadline => continue,
                    Err(err) => panic!("{css} containing {text:?} could not be read: {err}"),
                },
                Err(e) => panic!(
                    "no {css} containing {text:?} appeared ({e}); the page shows:\n{}",
                    self.page_text().await
                ),
            }
        }
    }

    /// Clicks the element matching `css`. A page reloads what it shows when an event
    /// concerns it, so the element found may be replaced before the click lands: then it is
    /// found again (a few times at most).
    pub async fn click(&self, css: &str) {
        for _ in 0..5 {
            match self.css(css).await.click().await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
        panic!("{css} was replaced under every click");
    }

    /// Chooses `value` in the `<select>` matching `css` (found again if a reload replaced it).
    pub async fn select(&self, css: &str, value: &str) {
        for _ in 0..5 {
            match self.css(css).await.select_by_value(value).await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("choosing {value:?} in {css}: {e}"),
            }
        }
        panic!("{css} was replaced under every choice");
    }

    /// Clicks `css`, whose handler asks for a confirmation (`window.confirm`), and accepts the
    /// dialog; returns the dialog's text. The dialog opens in the click's own handler, before
    /// the click command answers, so it is there to accept (WebDriver's user prompt).
    pub async fn click_and_confirm(&self, css: &str) -> String {
        self.click(css).await;
        let text = match self.client.get_alert_text().await {
            Ok(t) => t,
            Err(e) => panic!(
                "clicking {css} opened no confirmation dialog ({e}); the page shows:\n{}",
                self.page_text().await
            ),
        };
        self.client
            .accept_alert()
            .await
            .unwrap_or_else(|e| panic!("accepting the dialog of {css}: {e}"));
        text
    }

    /// Every element matching `css` now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// The page's visible text, for failure messages.
    pub async fn page_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        }
    }

    /// Runs `script` in the page and returns its value.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Closes the browser and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `[data-test=x]`, `tag[data-test=x]`, `[data-test=x][data-host="y"]` and descendants of
/// those (`[data-test=a] [data-test=b]`) as XPath: the subset of CSS the tests use with text
/// waits.
pub fn css_to_xpath(css: &str) -> String {
    css.split_whitespace()
        .map(|part| one_step(css, part))
        .collect()
}

fn one_step(css: &str, part: &str) -> String {
    let (tag, rest) = match part.find('[') {
        Some(i) => (&part[..i], &part[i..]),
        None => (part, ""),
    };
    let mut xpath = format!("//{}", if tag.is_empty() { "*" } else { tag });
    for attr in rest.split(']').filter(|s| !s.is_empty()) {
        let attr = attr.trim_start_matches('[');
        let (name, value) = attr
            .split_once('=')
            .unwrap_or_else(|| panic!("unsupported selector {css:?} for a text wait"));
        xpath.push_str(&format!(
            "[@{name}={}]",
            xpath_literal(value.trim_matches('"').trim_matches('\''))
        ));
    }
    xpath
}

/// A string as an XPath literal.
pub fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        let parts: Vec<String> = s.split('\'').map(|p| format!("'{p}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}

/// One action button of a page, as both roles press it: see [`viewer_refused_operator_acts`].
pub struct Act<'a> {
    /// The route both open first (`#/patches/p-1`); the same route again changes nothing.
    pub route: &'a str,
    /// The button (CSS).
    pub button: &'a str,
    /// Whether the button asks for a confirmation (the dialog is accepted, its text returned).
    pub confirm: bool,
    /// What the viewer's refusal must say besides `403` and the viewer role: the route the
    /// API refused (`/api/v1/patches/{id}/abort`).
    pub refused: &'a str,
}

/// What [`viewer_refused_operator_acts`] saw.
pub struct Acted {
    /// The refusal the viewer's page shows (the API's 403 and message).
    pub refusal: String,
    /// The confirmation dialog's text each saw (empty without one).
    pub viewer_dialog: String,
    pub operator_dialog: String,
}

/// The viewer opens `act.route` and presses `act.button`: the page shows the API's refusal
/// (403, the viewer role, the route). `after_refusal` then runs (to check through the API that
/// nothing changed, or to set the scene for the operator). Then the operator, on the same
/// route, presses the same button; what the action changes is the caller's to await (on the
/// page and through the API). Each role is signed in in its own browser.
pub async fn viewer_refused_operator_acts(
    viewer: &Browser,
    operator: &Browser,
    act: &Act<'_>,
    after_refusal: impl AsyncFnOnce(&str),
) -> Acted {
    viewer.route(act.route).await;
    let viewer_dialog = press(viewer, act).await;
    let refusal = viewer.text("[data-test=refused]", act.refused).await;
    assert!(
        refusal.contains("403") && refusal.contains("viewer"),
        "the viewer's refusal names the status and the role: {refusal}"
    );
    after_refusal(&refusal).await;
    operator.route(act.route).await;
    let operator_dialog = press(operator, act).await;
    Acted {
        refusal,
        viewer_dialog,
        operator_dialog,
    }
}

/// Presses `act.button` in `b`, accepting its confirmation when it asks one.
async fn press(b: &Browser, act: &Act<'_>) -> String {
    if act.confirm {
        b.click_and_confirm(act.button).await
    } else {
        b.click(act.button).await;
        String::new()
    }
}
