//! The gateway's routes for the dashboard (see [`crate::dashboard`]): the embedded page
//! and the JSON and server-sent events behind it.

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::response::{error_response, json_response, ApiError};
use crate::dashboard::{
    Action, ActionError, Dashboard, APP_JS, EVENT_EVERY, FAVICON_SVG, INDEX_HTML, STREAM_LIFETIME,
    STYLE_CSS,
};

/// Every `/ui` route. Reading needs nothing (as `GET /`); stop/start need the API
/// token when one is set.
pub(super) fn dashboard_routes(
    dashboard: Arc<Dashboard>,
    authorized: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    pretty: bool,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with_dashboard = warp::any().map(move || dashboard.clone());
    let ui = warp::path("ui");
    let page = ui
        .and(warp::path::end())
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let script = ui
        .and(warp::path!("app.js"))
        .and(warp::get())
        .map(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    let style = ui
        .and(warp::path!("style.css"))
        .and(warp::get())
        .map(|| asset(STYLE_CSS, "text/css; charset=utf-8"));
    let icon = ui
        .and(warp::path!("favicon.svg"))
        .and(warp::get())
        .map(|| asset(FAVICON_SVG, "image/svg+xml"));
    let cluster = ui
        .and(warp::path!("api" / "cluster"))
        .and(warp::get())
        .and(with_dashboard.clone())
        .then(move |dashboard: Arc<Dashboard>| async move {
            json_response(StatusCode::OK, dashboard.view().await.as_ref(), pretty)
        });
    let events = ui
        .and(warp::path!("api" / "events"))
        .and(warp::get())
        .and(with_dashboard.clone())
        .map(move |dashboard: Arc<Dashboard>| events(dashboard, pretty));
    let action = ui
        .and(warp::path!("api" / "members" / String / String))
        .and(warp::post())
        .and(authorized)
        .and(with_dashboard)
        .then(
            move |name: String, verb: String, dashboard: Arc<Dashboard>| async move {
                let action = match verb.as_str() {
                    "stop" => Action::Stop,
                    "start" => Action::Start,
                    "lead" => Action::Lead,
                    _ => {
                        let error = ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!("no such action: {verb:?} (stop, start, lead)"),
                        );
                        return error_response(&error, pretty);
                    }
                };
                match dashboard.act(&name, action).await {
                    Ok(()) => json_response(StatusCode::OK, &json!({"ok": true}), pretty),
                    Err(ActionError::UnknownMember(name)) => error_response(
                        &ApiError::new(StatusCode::NOT_FOUND, format!("no such member: {name}")),
                        pretty,
                    ),
                    Err(ActionError::Failed(status)) => error_response(&status.into(), pretty),
                }
            },
        );
    page.or(script)
        .unify()
        .or(style)
        .unify()
        .or(icon)
        .unify()
        .or(cluster)
        .unify()
        .or(events)
        .unify()
        .or(action)
        .unify()
}

/// An embedded file, allowed to load only from this node (no inline script, no other
/// origin), never cached across versions of the binary.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = warp::reply::with_status(body, StatusCode::OK).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The view every [`EVENT_EVERY`] as server-sent events (`event: cluster`), until the
/// node shuts down or [`STREAM_LIFETIME`] passes. Past the cap on viewers: 503, and
/// the page polls `/ui/api/cluster` instead.
fn events(dashboard: Arc<Dashboard>, pretty: bool) -> Response {
    let Some(permit) = dashboard.viewer_permit() else {
        let error =
            ApiError::unavailable("too many dashboards open on this node; poll /ui/api/cluster");
        return error_response(&error, pretty);
    };
    // A task makes the views and hands them over one at a time; it ends when the
    // viewer goes (the send fails), at shutdown, or when the stream's lifetime is up.
    let (views, received) = mpsc::channel(1);
    let mut stopping = dashboard.stopping();
    tokio::spawn(async move {
        let _permit = permit;
        let mut every = tokio::time::interval(EVENT_EVERY);
        let lifetime = tokio::time::sleep(STREAM_LIFETIME);
        tokio::pin!(lifetime);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = &mut lifetime => return,
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            let view = dashboard.view().await;
            let event = warp::sse::Event::default()
                .event("cluster")
                .data(view.to_string());
            if views.send(Ok::<_, Infallible>(event)).await.is_err() {
                return;
            }
        }
    });
    warp::sse::reply(warp::sse::keep_alive().stream(ReceiverStream::new(received))).into_response()
}
