// The Grafana dashboard as data: its panels, their PromQL, its variables, and
// the PromQL made concrete (Grafana's macros and template variables filled in)
// so Prometheus can evaluate it.

import fs from 'node:fs';

export function loadDashboard(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

/** Every panel, rows' nested panels included, in order. */
export function allPanels(dashboard) {
  const out = [];
  const walk = (panels) => {
    for (const p of panels ?? []) {
      out.push(p);
      if (p.panels) walk(p.panels);
    }
  };
  walk(dashboard.panels);
  return out;
}

/** [{ panel, refId, expr, legend }] for every PromQL target. */
export function dashboardTargets(dashboard) {
  const out = [];
  for (const panel of allPanels(dashboard)) {
    for (const t of panel.targets ?? []) {
      if (typeof t.expr === 'string' && t.expr.trim()) out.push({ panel: panel.title, panelId: panel.id, refId: t.refId, expr: t.expr, legend: t.legendFormat });
    }
  }
  return out;
}

// As Grafana does for a variable inside a PromQL =~ "…" matcher: the regex
// escape's backslash is itself escaped for the PromQL string literal.
const escapeRegex = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\\\$&');

/**
 * Fill in Grafana's macros and the dashboard's template variables.
 * @param {string} expr
 * @param {object} o
 * @param {string} o.rateInterval  e.g. "30s" for $__rate_interval (and $__interval)
 * @param {string} [o.range]       for $__range (defaults to rateInterval)
 * @param {Record<string,string[]|string>} [o.vars]  variable -> selected values (escaped and regex-joined, as
 *   Grafana does for =~), or a string put in as it is (a variable's "All" value, e.g. ".+")
 */
export function concreteExpr(expr, { rateInterval, range = rateInterval, vars = {} }) {
  let out = expr
    .replaceAll('$__rate_interval', rateInterval)
    .replaceAll('${__rate_interval}', rateInterval)
    .replaceAll('$__interval', rateInterval)
    .replaceAll('${__interval}', rateInterval)
    .replaceAll('$__range', range)
    .replaceAll('${__range}', range);
  for (const [name, values] of Object.entries(vars)) {
    const v = typeof values === 'string' ? values : values.length === 1 ? escapeRegex(values[0]) : `(${values.map(escapeRegex).join('|')})`;
    out = out.replaceAll(`\${${name}}`, v).replace(new RegExp(`\\$${name}(?![A-Za-z0-9_])`, 'g'), v);
  }
  const left = out.match(/\$\{?[A-Za-z_][A-Za-z0-9_]*/);
  if (left) throw new Error(`unsubstituted variable ${left[0]} in: ${out}`);
  return out;
}

/** Metric names a PromQL expression selects (identifiers followed by { or [ that are not functions/keywords). */
export function metricNames(expr) {
  const names = new Set();
  const re = /([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{|\[)/g;
  let m;
  while ((m = re.exec(expr)) !== null) names.add(m[1]);
  // Bare selectors such as `up` or `process_open_fds` without braces.
  for (const w of expr.match(/[a-zA-Z_:][a-zA-Z0-9_:]*/g) ?? []) if (/^(mcp_oauth_proxy_|process_)/.test(w)) names.add(w);
  return [...names].filter((n) => !['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool'].includes(n));
}

/** The metrics whose `route` label is the configured route's name (`http_*`'s `route` is a path template). */
export const ROUTED_METRICS = /^mcp_oauth_proxy_(mcp_requests_total|policy_decisions_total|policy_evaluation_seconds(_bucket|_sum|_count)?|policy_reloads_total|policy_shadow_disagreements_total|policy_shadow_errors_total|policy_observer_dropped_total|downstream_requests_total|downstream_request_duration_seconds(_bucket|_sum|_count)?|downstream_connect_errors_total|downstream_timeouts_total|sse_streams_open|sse_events_total)$/;
