/// The console's pages as Mustache templates, compiled in (no files beside the binary). `{{x}}`
/// escapes HTML, and no template uses `{{{x}}}`: key names, prompts and Google's error text are
/// always text. Links are relative, so the console works unchanged under a proxy's sub-path.
enum ConsoleTemplates {
    static let all: [String: String] = [
        "head": head, "foot": foot, "signin": signin, "overview": overview, "keys": keys, "groups": groups, "prices": prices,
        "channels": channels, "usage": usage, "jobs": jobs, "batches": batches, "playground": playground, "models": models,
        "quickstart": quickstart,
    ]

    static let head = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>{{title}} · NanoGate console</title>
        <link rel="stylesheet" href="assets/console.css?v={{version}}">
        <script type="module" src="assets/console.js?v={{version}}"></script>
        {{#script}}<script type="module" src="assets/{{script}}?v={{version}}"></script>{{/script}}
        </head>
        <body>
        <a class="skip" href="#main">Skip to content</a>
        <header class="top">
        <span class="brand">NanoGate</span>
        {{#signedIn}}
        <nav aria-label="Console pages"><ul>
        {{#nav}}<li><a href="{{href}}"{{#current}} aria-current="page"{{/current}}>{{label}}</a></li>{{/nav}}
        </ul></nav>
        <form method="post" action="signout" class="signout" data-console-form>
        <span class="who">{{who}}</span> <button type="submit">Sign out</button>
        </form>
        {{/signedIn}}
        </header>
        <main id="main">
        <h1>{{title}}</h1>
        <p class="alert" role="alert" data-page-alert hidden></p>
        """#

    static let foot = #"""
        </main>
        </body>
        </html>
        """#

    static let signin = #"""
        {{> head}}
        <form method="post" action="signin" class="card narrow" data-console-form>
        <p>Sign in with {{#operatorAllowed}}the operator's admin token (<code>NANOGATE_ADMIN_TOKEN</code>) or {{/operatorAllowed}}a NanoGate API key (<code>sk-ng-…</code>).</p>
        <label for="token">Token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" required>
        <p class="alert" role="alert" data-form-alert hidden></p>
        <button type="submit">Sign in</button>
        </form>
        {{> foot}}
        """#

    static let overview = #"""
        {{> head}}
        <nav class="ranges" aria-label="Time range">{{#ranges}}<a href="overview?days={{days}}"{{#current}} aria-current="page"{{/current}}>{{label}}</a> {{/ranges}}</nav>
        <section class="cards" aria-label="Totals">
        <div class="card"><h2>Spend</h2><p class="big">{{total.spend}}</p><p>Google cost {{total.upstream}}</p></div>
        <div class="card"><h2>Requests</h2><p class="big">{{total.requests}}</p><p>{{total.errorRate}} errors</p></div>
        <div class="card"><h2>Images</h2><p class="big">{{total.images}}</p></div>
        <div class="card"><h2>Latency</h2><p class="big">{{total.p50}}</p><p>p95 {{total.p95}}</p></div>
        </section>
        <section aria-labelledby="daily">
        <h2 id="daily">Spend per day</h2>
        <svg class="chart" viewBox="0 0 {{chart.width}} {{chart.height}}" role="img" aria-labelledby="chart-title">
        <title id="chart-title">Spend per day, {{rangeLabel}}; the numbers are in the table below.</title>
        <line x1="0" y1="{{chart.base}}" x2="{{chart.width}}" y2="{{chart.base}}" class="axis"/>
        {{#chart.bars}}<rect x="{{x}}" y="{{y}}" width="{{width}}" height="{{height}}" class="bar{{#errors}} has-errors{{/errors}}"><title>{{day}}: {{spend}}, {{requests}} requests</title></rect>{{/chart.bars}}
        </svg>
        <div class="scroll"><table>
        <caption>Per day (UTC)</caption>
        <thead><tr><th scope="col">Day</th><th scope="col">Requests</th><th scope="col">Errors</th><th scope="col">Images</th><th scope="col">Spend</th><th scope="col">Google cost</th><th scope="col">p50</th><th scope="col">p95</th></tr></thead>
        <tbody>{{#days}}<tr><th scope="row">{{group}}</th><td>{{requests}}</td><td>{{errors}}</td><td>{{images}}</td><td>{{spend}}</td><td>{{upstream}}</td><td>{{p50}}</td><td>{{p95}}</td></tr>{{/days}}</tbody>
        </table></div>
        </section>
        <section class="columns">
        <div><h2>Top keys</h2><table><thead><tr><th scope="col">Key</th><th scope="col">Requests</th><th scope="col">Spend</th></tr></thead>
        <tbody>{{#topKeys}}<tr><th scope="row">{{group}}</th><td>{{requests}}</td><td>{{spend}}</td></tr>{{/topKeys}}{{^topKeys}}<tr><td colspan="3">No requests yet.</td></tr>{{/topKeys}}</tbody></table></div>
        <div><h2>Top models</h2><table><thead><tr><th scope="col">Model</th><th scope="col">Requests</th><th scope="col">Spend</th></tr></thead>
        <tbody>{{#topModels}}<tr><th scope="row">{{group}}</th><td>{{requests}}</td><td>{{spend}}</td></tr>{{/topModels}}{{^topModels}}<tr><td colspan="3">No requests yet.</td></tr>{{/topModels}}</tbody></table></div>
        </section>
        <section><h2>Channels</h2><table><thead><tr><th scope="col">Channel</th><th scope="col">State</th><th scope="col">In flight</th><th scope="col">Last error</th></tr></thead>
        <tbody>{{#channels}}<tr><th scope="row">{{name}}</th><td><span class="state state-{{state}}">{{state}}</span></td><td>{{inFlight}} / {{maxConcurrency}}</td><td>{{lastError}}</td></tr>{{/channels}}</tbody></table></section>
        {{> foot}}
        """#

    static let keys = #"""
        {{> head}}
        <section class="card">
        <h2>New key</h2>
        <form class="inline" data-console-form data-endpoint="api/admin/v1/keys" data-method="POST" data-then="secret">
        <div><label for="key-name">Name</label><input id="key-name" name="name" data-field required maxlength="128"></div>
        <div><label for="key-group">Group</label><select id="key-group" name="group" data-field>{{#groups}}<option>{{name}}</option>{{/groups}}</select></div>
        <div><label for="key-credit">Credit (USD)</label><input id="key-credit" name="credit_usd" data-field data-type="number" type="number" min="0" step="0.01" placeholder="unlimited"></div>
        <button type="submit">Create key</button>
        <p class="alert" role="alert" data-form-alert hidden></p>
        </form>
        <div class="secret" data-secret-box hidden>
        <p>The new secret, shown once: copy it now.</p>
        <code data-secret></code> <button type="button" data-copy>Copy</button> <a href="keys">Done</a>
        </div>
        </section>
        <div class="scroll"><table class="keys">
        <caption>Keys</caption>
        <thead><tr><th scope="col">Name</th><th scope="col">Group</th><th scope="col">Credit</th><th scope="col">Spent</th><th scope="col">Reserved</th><th scope="col">Balance</th><th scope="col">Limits</th><th scope="col">Expires</th><th scope="col">State</th><th scope="col">Actions</th></tr></thead>
        <tbody>
        {{#keys}}
        <tr data-key="{{name}}">
        <th scope="row">{{name}}<br><code>{{prefix}}…</code></th><td>{{group}}</td><td>{{credit}}</td><td>{{spent}}</td><td>{{reserved}}</td>
        <td>{{balance}}{{#meter}}<meter min="0" max="100" value="{{meter}}" aria-label="Share of credit left for {{name}}">{{meter}}%</meter>{{/meter}}</td>
        <td>{{limits}}</td><td>{{expires}}</td><td>{{#disabled}}disabled{{/disabled}}{{^disabled}}active{{/disabled}}</td>
        <td class="actions">
        <form class="inline" data-console-form data-endpoint="api/admin/v1/keys/{{path}}" data-method="PATCH" data-then="reload">
        <label for="topup-{{index}}">Top up (USD)</label><input id="topup-{{index}}" name="add_credit_usd" data-field data-type="number" type="number" min="0" step="0.01" required>
        <button type="submit">Top up</button>
        <p class="alert" role="alert" data-form-alert hidden></p>
        </form>
        <form class="inline" data-console-form data-endpoint="api/admin/v1/keys/{{path}}" data-method="PATCH" data-then="reload">
        <div><label for="rpm-{{index}}">Requests per minute</label><input id="rpm-{{index}}" name="rpm" data-field data-type="number-or-null" type="number" min="1" value="{{rpm}}" placeholder="no limit"></div>
        <div><label for="concurrency-{{index}}">At once</label><input id="concurrency-{{index}}" name="concurrency" data-field data-type="number-or-null" type="number" min="1" value="{{concurrency}}" placeholder="no limit"></div>
        <div><label for="expires-{{index}}">Expires (UTC day)</label><input id="expires-{{index}}" name="expires_at" data-field data-type="text-or-null" type="date" value="{{expiresDay}}"></div>
        <button type="submit">Set limits</button>
        </form>
        <form class="inline" data-console-form data-endpoint="api/admin/v1/keys/{{path}}" data-method="PATCH" data-then="reload">
        <input type="hidden" name="disabled" data-field data-type="bool" value="{{^disabled}}true{{/disabled}}{{#disabled}}false{{/disabled}}">
        <button type="submit">{{#disabled}}Enable{{/disabled}}{{^disabled}}Disable{{/disabled}}</button>
        </form>
        <form class="inline" data-console-form data-endpoint="api/admin/v1/keys/{{path}}/rotate" data-method="POST" data-then="secret">
        <button type="submit">Rotate</button>
        </form>
        <form class="inline" data-console-form data-endpoint="api/admin/v1/keys/{{path}}" data-method="DELETE" data-then="reload">
        <label for="revoke-{{index}}">Type the name to revoke</label><input id="revoke-{{index}}" name="confirm" data-must-equal="{{name}}" autocomplete="off">
        <button type="submit" class="danger">Revoke</button>
        <p class="alert" role="alert" data-form-alert hidden></p>
        </form>
        </td>
        </tr>
        {{/keys}}
        {{^keys}}<tr><td colspan="10">No keys yet.</td></tr>{{/keys}}
        </tbody>
        </table></div>
        {{> foot}}
        """#

    static let groups = #"""
        {{> head}}
        <section class="card">
        <h2>New group</h2>
        <form class="inline" data-console-form data-endpoint="api/admin/v1/groups" data-method="POST" data-then="reload">
        <div><label for="group-name">Group name</label><input id="group-name" name="name" data-field required></div>
        <div><label for="group-format">Default response format</label><select id="group-format" name="response_format" data-field><option>url</option><option>b64_json</option></select></div>
        <div><label for="group-multiplier">Price multiplier</label><input id="group-multiplier" name="multiplier" data-field data-type="number" type="number" min="0" step="0.01" value="1"></div>
        <button type="submit">Create group</button>
        <p class="alert" role="alert" data-form-alert hidden></p>
        </form>
        </section>
        <table><caption>Groups</caption>
        <thead><tr><th scope="col">Group</th><th scope="col">Default response format</th><th scope="col">Multiplier</th><th scope="col">Models</th><th scope="col">Service tiers</th></tr></thead>
        <tbody>{{#groups}}<tr><th scope="row">{{name}}</th><td>{{response_format}}</td><td>{{multiplier}}</td><td>{{models}}</td><td>{{tiers}}</td></tr>{{/groups}}</tbody>
        </table>
        {{> foot}}
        """#

    static let prices = #"""
        {{> head}}
        <div class="scroll"><table>
        <caption>One image, at the standard tier and a multiplier of 1 (text and input tokens come on top)</caption>
        <thead><tr><th scope="col">Model</th><th scope="col">Upstream</th>{{#tierNames}}<th scope="col">{{.}}</th>{{/tierNames}}</tr></thead>
        <tbody>{{#perImage}}<tr><th scope="row">{{model}}</th><td>{{upstream}}</td>{{#cells}}<td>{{.}}</td>{{/cells}}</tr>{{/perImage}}</tbody>
        </table></div>
        <div class="scroll"><table>
        <caption>USD per 1M tokens, by modality</caption>
        <thead><tr><th scope="col">Upstream model</th><th scope="col">Input text</th><th scope="col">Input image</th><th scope="col">Output text</th><th scope="col">Output image</th><th scope="col">Source</th></tr></thead>
        <tbody>{{#prices}}<tr><th scope="row">{{model}}</th><td>{{input_text}}</td><td>{{input_image}}</td><td>{{output_text}}</td><td>{{output_image}}</td><td>{{source}}</td></tr>{{/prices}}</tbody>
        </table></div>
        {{> foot}}
        """#

    static let channels = #"""
        {{> head}}
        <div class="scroll"><table>
        <caption>Upstream channels</caption>
        <thead><tr><th scope="col">Channel</th><th scope="col">Kind</th><th scope="col">State</th><th scope="col">Load</th><th scope="col">Credentials</th><th scope="col">Cooling</th><th scope="col">Last error</th><th scope="col">Test</th></tr></thead>
        <tbody>
        {{#channels}}
        <tr data-channel="{{name}}">
        <th scope="row">{{name}}{{#managed}} <small>(added here)</small>{{/managed}}</th><td>{{kind}}</td><td><span class="state state-{{state}}">{{state}}</span></td>
        <td>{{inFlight}} running, {{queued}} queued of {{maxConcurrency}}</td><td>{{keys}}{{#refused}}; refused: {{refused}}{{/refused}}</td><td>{{cooling}}</td><td>{{lastError}}</td>
        <td class="actions">
        <form class="inline" data-console-form data-endpoint="api/admin/v1/channels/{{path}}/test" data-method="POST" data-then="result" data-query="model">
        <label for="test-model-{{index}}">Model</label><select id="test-model-{{index}}" name="model">{{#upstreams}}<option>{{.}}</option>{{/upstreams}}</select>
        <button type="submit">Test</button> <output data-result-text></output>
        </form>
        {{#managed}}<form class="inline" data-console-form data-endpoint="api/admin/v1/channels/{{path}}" data-method="DELETE" data-then="reload">
        <label for="remove-{{index}}">Type the name to remove</label><input id="remove-{{index}}" name="confirm" data-must-equal="{{name}}" autocomplete="off">
        <button type="submit" class="danger">Remove</button><p class="alert" role="alert" data-form-alert hidden></p></form>{{/managed}}
        </td>
        </tr>
        {{/channels}}
        </tbody>
        </table></div>
        <section class="card">
        <h2>Add a channel</h2>
        <form data-console-form data-endpoint="api/admin/v1/channels" data-method="POST" data-then="reload" data-raw="channel">
        <label for="channel-json">Channel (JSON, the configuration file's keys)</label>
        <textarea id="channel-json" name="channel" rows="6" required>{"name": "google-2", "kind": "gemini", "api_keys": ["AIza…"]}</textarea>
        <button type="submit">Add channel</button>
        <p class="alert" role="alert" data-form-alert hidden></p>
        </form>
        </section>
        {{> foot}}
        """#

    static let usage = #"""
        {{> head}}
        {{#account}}
        <section class="cards" aria-label="Balance">
        <div class="card"><h2>Balance</h2><p class="big">{{balance}}</p>{{#meter}}<meter min="0" max="100" value="{{meter}}" aria-label="Share of credit left">{{meter}}%</meter>{{/meter}}</div>
        <div class="card"><h2>Credit</h2><p class="big">{{credit}}</p><p>spent {{spent}}, reserved {{reserved}}</p></div>
        <div class="card"><h2>Limits</h2><p>{{limits}}</p><p>Expires: {{expires}}</p><p>Models: {{models}}</p></div>
        </section>
        {{/account}}
        <form method="get" action="usage" class="filters">
        {{#operator}}<div><label for="f-key">Key</label><select id="f-key" name="key"><option value="">any</option>{{#keyOptions}}<option{{#selected}} selected{{/selected}}>{{name}}</option>{{/keyOptions}}</select></div>{{/operator}}
        <div><label for="f-model">Model</label><select id="f-model" name="model"><option value="">any</option>{{#modelOptions}}<option{{#selected}} selected{{/selected}}>{{name}}</option>{{/modelOptions}}</select></div>
        <div><label for="f-status">Status</label><select id="f-status" name="status">{{#statusOptions}}<option value="{{value}}"{{#selected}} selected{{/selected}}>{{label}}</option>{{/statusOptions}}</select></div>
        <div><label for="f-since">Since</label><input id="f-since" name="since" type="date" value="{{since}}"></div>
        <div><label for="f-until">Until</label><input id="f-until" name="until" type="date" value="{{until}}"></div>
        <button type="submit">Filter</button>
        <a class="button" href="{{csv}}" download>Download CSV</a>
        </form>
        <div class="scroll"><table class="usage">
        <caption>{{count}} {{rowWord}}, newest first (500 at most here; Download CSV for more)</caption>
        <thead><tr><th scope="col">When</th><th scope="col">Request</th>{{#operator}}<th scope="col">Key</th>{{/operator}}<th scope="col">Model</th><th scope="col">Size asked / delivered<br><small>endpoint, tier</small></th><th scope="col">Status</th><th scope="col">Images</th><th scope="col">Tokens in (text/image)</th><th scope="col">Tokens out (text/image)</th><th scope="col">Charge</th>{{#operator}}<th scope="col">Google cost</th>{{/operator}}<th scope="col">Latency</th></tr></thead>
        <tbody>
        {{#rows}}
        <tr data-request-id="{{request_id}}" id="{{request_id}}">
        <td>{{created_at}}</td><td><code>{{request_id}}</code>{{#hasAttempts}}<details><summary>Upstream attempts</summary><ol>{{#attempts}}<li>{{.}}</li>{{/attempts}}</ol></details>{{/hasAttempts}}</td>
        {{#operator}}<td>{{key}}</td>{{/operator}}<td>{{model}}<br><small>{{upstream_model}}</small></td><td>{{requested_size}} / {{delivered_size}}<br><small>{{endpoint}}{{#service_tier}}, {{service_tier}}{{/service_tier}}</small></td>
        <td>{{status}}{{#error_code}}<br><small>{{error_code}}</small>{{/error_code}}</td><td>{{images}}</td>
        <td>{{input_text_tokens}} / {{input_image_tokens}}</td><td>{{output_text_tokens}} / {{output_image_tokens}}</td><td data-charge>{{cost}}</td>{{#operator}}<td>{{upstream_cost}}</td>{{/operator}}<td>{{latency_ms}} ms</td>
        </tr>
        {{/rows}}
        {{^rows}}<tr><td colspan="12">No requests match.</td></tr>{{/rows}}
        </tbody>
        </table></div>
        {{> foot}}
        """#

    static let jobs = #"""
        {{> head}}
        <div class="scroll"><table>
        <caption>Background image jobs, newest first</caption>
        <thead><tr><th scope="col">Job</th>{{#operator}}<th scope="col">Key</th>{{/operator}}<th scope="col">Model</th><th scope="col">Endpoint</th><th scope="col">Status</th><th scope="col">Attempts</th><th scope="col">Charged</th><th scope="col">Created</th><th scope="col">Finished</th><th scope="col">Error</th><th scope="col">Cancel</th></tr></thead>
        <tbody>{{#jobs}}<tr data-job="{{id}}"><th scope="row"><code>{{id}}</code></th>{{#operator}}<td>{{key}}</td>{{/operator}}<td>{{model}}</td><td>{{endpoint}}</td><td>{{status}}</td><td>{{attempts}}</td><td>{{cost}}</td><td>{{created}}</td><td>{{completed}}</td><td>{{error}}</td>
        <td>{{#cancellable}}<form class="inline" data-console-form data-endpoint="api/v1/images/jobs/{{id}}" data-method="DELETE" data-key="{{key}}" data-then="reload"><button type="submit">Cancel</button></form>{{/cancellable}}</td></tr>{{/jobs}}
        {{^jobs}}<tr><td colspan="11">No jobs.</td></tr>{{/jobs}}</tbody>
        </table></div>
        {{> foot}}
        """#

    static let batches = #"""
        {{> head}}
        <div class="scroll"><table>
        <caption>Batches, newest first</caption>
        <thead><tr><th scope="col">Batch</th>{{#operator}}<th scope="col">Key</th>{{/operator}}<th scope="col">Model</th><th scope="col">Status</th><th scope="col">Progress</th><th scope="col">Charged</th><th scope="col">Created</th><th scope="col">Cancel</th></tr></thead>
        <tbody>{{#batches}}<tr data-batch="{{id}}"><th scope="row"><code>{{id}}</code></th>{{#operator}}<td>{{key}}</td>{{/operator}}<td>{{model}}</td><td>{{status}}</td>
        <td><progress max="{{total}}" value="{{done}}" aria-label="Lines done of {{id}}">{{done}}/{{total}}</progress> {{completed}} done, {{failed}} failed of {{total}}</td><td>{{cost}}</td><td>{{created}}</td>
        <td>{{#cancellable}}<form class="inline" data-console-form data-endpoint="api/v1/batches/{{id}}/cancel" data-method="POST" data-key="{{key}}" data-then="reload"><button type="submit">Cancel</button></form>{{/cancellable}}</td></tr>{{/batches}}
        {{^batches}}<tr><td colspan="8">No batches.</td></tr>{{/batches}}</tbody>
        </table></div>
        {{> foot}}
        """#

    static let playground = #"""
        {{> head}}
        <div class="playground">
        <form id="controls" class="card controls" novalidate>
        {{#operator}}<div class="field"><label for="paying_key">Paying key</label><select id="paying_key">{{#keys}}<option>{{name}}</option>{{/keys}}</select>
        {{^keys}}<p>Create a key first (Keys).</p>{{/keys}}</div>{{/operator}}
        <div class="field"><label for="model">Model</label><select id="model"></select></div>
        <div class="field"><label for="prompt">Prompt</label><textarea id="prompt" rows="4" required>A nano banana dish in a fancy restaurant</textarea></div>
        <div class="field"><label for="aspect_ratio">Aspect ratio</label><select id="aspect_ratio"></select> <svg class="shape" viewBox="0 0 44 44" aria-hidden="true"><rect id="shape" x="2" y="2" width="40" height="40"/></svg></div>
        <div class="field" id="size-field"><label for="size">Size</label><select id="size"></select></div>
        <div class="field"><label for="n">Images</label><input id="n" type="number" min="1" max="4" value="1"></div>
        <div class="field"><label for="output_format">Output format</label><select id="output_format"></select></div>
        <div class="field"><label for="response_format">Response format</label><select id="response_format"></select></div>
        <div class="field" id="stream-field"><input id="stream" type="checkbox"> <label for="stream">Stream (partial images as they come)</label></div>
        <div class="field"><input id="chat" type="checkbox"> <label for="chat">Chat mode (each turn edits the last image)</label></div>
        <div class="field drop" id="drop"><label for="reference">Reference images</label> <input id="reference" type="file" accept="image/png,image/jpeg,image/webp" multiple>
        <p><span id="reference-count">0</span> of <span id="reference-max">0</span>; drop or paste images here too.</p><ul id="reference-list" class="thumbs"></ul></div>
        <p id="preview" class="preview" aria-live="polite"></p>
        <div class="buttons"><button type="submit" id="generate">Generate</button> <button type="button" id="copy-curl">Copy as curl</button> <button type="button" id="copy-python">Copy as Python</button> <button type="button" id="new-chat">New conversation</button></div>
        <p class="alert" role="alert" id="error" hidden></p>
        <pre id="snippet" class="snippet" hidden></pre>
        </form>
        <section class="results" aria-labelledby="results-title">
        <h2 id="results-title">Results</h2>
        <div id="results" aria-live="polite"></div>
        <h2>History <small>(kept in this browser only)</small></h2>
        <ul id="history" class="history"></ul>
        </section>
        </div>
        {{> foot}}
        """#

    static let models = #"""
        {{> head}}
        <div class="scroll"><table>
        <caption>Models this key may use, with the price of one image (text and input tokens come on top)</caption>
        <thead><tr><th scope="col">Model</th><th scope="col">Family</th><th scope="col">Aspect ratios</th><th scope="col">Sizes</th><th scope="col">Reference images</th><th scope="col">URL output</th><th scope="col">Price per image</th></tr></thead>
        <tbody>{{#models}}<tr><th scope="row"><code>{{id}}</code></th><td>{{family}}</td><td>{{ratios}}</td><td>{{sizes}}</td><td>up to {{maxInputs}}</td><td>{{#url}}yes{{/url}}{{^url}}no{{/url}}</td><td>{{prices}}</td></tr>{{/models}}</tbody>
        </table></div>
        {{> foot}}
        """#

    static let quickstart = #"""
        {{> head}}
        <p>Your key's secret was shown once, when it was made; it is never shown again. Put it in <code>NANOGATE_API_KEY</code>. The base URL is <code data-base-url>{{base}}</code>.</p>
        <h2>curl</h2>
        <pre class="snippet"><code data-snippet="curl">curl {{base}}/images/generations \
          -H "Authorization: Bearer $NANOGATE_API_KEY" \
          -H "Content-Type: application/json" \
          -d '{"model": "{{model}}", "prompt": "A nano banana dish in a fancy restaurant", "size": "{{size}}", "response_format": "b64_json"}'</code></pre>
        <h2>Python (openai)</h2>
        <pre class="snippet"><code data-snippet="python">import base64, os
        from openai import OpenAI

        client = OpenAI(base_url="{{base}}", api_key=os.environ["NANOGATE_API_KEY"])
        result = client.images.generate(model="{{model}}", prompt="A nano banana dish in a fancy restaurant", size="{{size}}", response_format="b64_json")
        open("banana.png", "wb").write(base64.b64decode(result.data[0].b64_json))</code></pre>
        <h2>Models</h2>
        <ul>{{#models}}<li><code>{{.}}</code></li>{{/models}}</ul>
        {{> foot}}
        """#
}
