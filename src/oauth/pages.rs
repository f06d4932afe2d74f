//! What a person's browser receives: the consent page, error pages and
//! redirects.
//!
//! Pages are small, self-contained, never framed and load nothing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;background:#f5f6f8;color:#1d2230;margin:0}\
main{max-width:30rem;margin:8vh auto;background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2rem}\
h1{font-size:1.3rem;margin:0 0 1rem}p{line-height:1.5}code{background:#f0f1f4;padding:.1rem .3rem;border-radius:4px;word-break:break-all}\
.actions{display:flex;gap:.75rem;margin-top:1.5rem}button{font-size:1rem;padding:.6rem 1.2rem;border-radius:8px;border:1px solid #c5c9d3;background:#fff;cursor:pointer}\
button.primary{background:#2459d6;border-color:#2459d6;color:#fff}.muted{color:#5b6272;font-size:.9rem}";

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><title>{}</title><style>{STYLE}</style></head>\
<body><main>{body}</main></body></html>",
        escape(title)
    )
}

/// An error page: `title` as heading, `message` below it, both escaped.
pub(crate) fn error_page(title: &str, message: &str) -> String {
    layout(
        title,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message)),
    )
}

/// What the consent page shows and submits.
pub(crate) struct ConsentPage<'a> {
    pub(crate) client_name: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) redirect_host: &'a str,
    pub(crate) redirect_uri: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) csrf_token: &'a str,
    pub(crate) resource: Option<&'a str>,
    /// The MCP servers (route names) the approval covers.
    pub(crate) servers: &'a [&'a str],
}

/// One `<form method="post">`: hidden inputs and a `decision` button. What
/// the client chose is isolated in `<bdi>` so no text of its own can reorder
/// the sentence around it (registration refuses bidi controls too).
pub(crate) fn consent_page(page: &ConsentPage<'_>) -> String {
    let resource = page
        .resource
        .map(|r| {
            format!(
                "<p class=\"muted\">Access to: <code>{}</code></p>",
                escape(r)
            )
        })
        .unwrap_or_default();
    let servers = match page.servers {
        [] => String::new(),
        [one] => format!(
            "<p>MCP server: <strong><code>{}</code></strong></p>",
            escape(one)
        ),
        several => format!(
            "<p>MCP servers: {}</p>",
            several
                .iter()
                .map(|s| format!("<strong><code>{}</code></strong>", escape(s)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let body = format!(
        "<h1>Allow <bdi>{name}</bdi> to use your MCP server access?</h1>{servers}\
<p><strong><bdi>{name}</bdi></strong> (client <code><bdi>{id}</bdi></code>) is asking to act for you. \
After you sign in, it will be sent back to <strong><bdi>{host}</bdi></strong>.</p>\
<p class=\"muted\">Redirect address: <code><bdi>{uri}</bdi></code></p>{resource}\
<p class=\"muted\">Only allow applications you started yourself and trust.</p>\
<form method=\"post\" action=\"/consent\">\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<div class=\"actions\">\
<button class=\"primary\" type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
</div></form>",
        name = escape(page.client_name),
        id = escape(page.client_id),
        host = escape(page.redirect_host),
        uri = escape(page.redirect_uri),
        request = escape(page.request_id),
        csrf = escape(page.csrf_token),
    );
    layout("Authorize application", &body)
}

/// An HTML response that cannot be framed, cached or used to load anything.
pub(crate) fn html_response(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A 302 redirect that caches nowhere; a page instead when `location` cannot
/// be a header value.
pub(crate) fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, value);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => html_response(
            StatusCode::BAD_REQUEST,
            error_page(
                "Invalid redirect",
                "The redirect address contains invalid characters.",
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_page_escapes_client_supplied_text() {
        let html = consent_page(&ConsentPage {
            client_name: "<script>alert(1)</script>",
            client_id: "id\"onmouseover=x",
            redirect_host: "evil.example",
            redirect_uri: "https://evil.example/cb",
            request_id: "r",
            csrf_token: "c",
            resource: None,
            servers: &["github", "wiki<b>"],
        });
        assert!(html.contains("MCP servers: <strong><code>github</code></strong>, <strong><code>wiki&lt;b&gt;</code></strong>"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("id\"onmouseover"));
        assert_eq!(html.matches("<form").count(), 1);
        assert!(html.contains("<form method=\"post\""));
        assert!(html.contains("name=\"decision\" value=\"approve\""));
    }
}
