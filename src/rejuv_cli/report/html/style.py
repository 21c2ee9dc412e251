"""The page's inline CSS (no external fonts or stylesheets)."""

CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d8dee4; --bg:#ffffff; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid
  var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
p { margin: 6px 0; }
.muted { color: var(--muted); }
.small { font-size: 12px; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas,
  "Liberation Mono", monospace; font-size: 12.5px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 12px; overflow-x: auto; white-space: pre-wrap; word-break: break-all;
  margin: 8px 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; font-size: 13px; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.kv th { background: none; color: var(--muted); font-weight: 500; min-width: 150px;
  white-space: nowrap; }
table.kv td { word-break: break-all; }
table.wide { width: 100%; }
td.name { word-break: break-all; }
.verdict { border: 2px solid var(--vc); border-radius: 8px; padding: 14px 18px; margin: 18px 0;
  background: var(--vbg); }
.verdict + .verdict { margin-top: 12px; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; color: #fff;
  font-weight: 700; letter-spacing: 0.04em; background: var(--vc); }
.badge.big { font-size: 20px; padding: 2px 16px; vertical-align: middle; }
.level { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 11px;
  color: #fff; font-weight: 600; margin-right: 6px; }
.better { color: #2b8a3e; font-weight: 600; }
.worse { color: #c92a2a; font-weight: 600; }
.same { color: var(--muted); }
abbr[title] { text-decoration: underline dotted; cursor: help; }
p.legend { margin: 0 0 12px; max-width: 100ch; }
p.next { margin-top: 10px; }
.plots { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 6px 0 12px; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 2px; }
svg { max-width: 100%; height: auto; display: block; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
details > summary { cursor: pointer; color: var(--muted); margin: 4px 0; }
.path { color: var(--muted); font-family: ui-monospace, SFMono-Regular, Menlo, Consolas,
  "Liberation Mono", monospace; font-size: 11px; font-weight: 400; word-break: break-all; }
footer { margin-top: 36px; padding-top: 10px; border-top: 1px solid var(--line);
  color: var(--muted); font-size: 13px; }
"""
