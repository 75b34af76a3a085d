// Ferry's playground: every hosted endpoint as a form built from its input JSON schema, run through the
// queue API and followed live over Connect. Plain browser JavaScript, no build step, no dependency: the
// schemas pydantic writes are a small, self-contained subset of JSON schema, and the widgets that matter
// most (upload-or-URL with previews, datasets of files) are this playground's own hints, which a generic
// JSON-schema form library would render as text boxes anyway.
"use strict";

(() => {
  const OWNER = "ferry"; // the queue API's owner segment: required by its URL shape, ignored by Ferry
  const TOKEN_KEY = "ferry.playground.token";
  const FILE_KINDS = ["image", "video", "audio", "file"];
  const CANCELLED = 1; // google.rpc.Code.CANCELLED
  const END_STREAM = 0x02; // Connect's envelope flag for the last frame

  const byId = (id) => document.getElementById(id);
  const state = { apps: [], endpoint: null, form: null, run: null, language: "curl" };
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let uniqueIds = 0;

  // -- small helpers ------------------------------------------------------------------------------

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== undefined && child !== null) node.append(child);
    }
    return node;
  }

  // append() without the nulls: a field with no description has no help line.
  function put(node, ...children) {
    node.append(...children.filter((child) => child !== null && child !== undefined));
  }

  function newId(prefix) {
    uniqueIds += 1;
    return `${prefix.replace(/[^A-Za-z0-9_-]/g, "-")}-${uniqueIds}`;
  }

  function formatBytes(value) {
    const bytes = Number(value);
    if (!Number.isFinite(bytes) || bytes <= 0) return "";
    const units = ["bytes", "KiB", "MiB", "GiB"];
    let size = bytes;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) {
      size /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${bytes} bytes` : `${size.toFixed(1)} ${units[unit]}`;
  }

  // Only these schemes become a src or href: a value such as "javascript:…" never does.
  function safeUrl(value) {
    if (typeof value !== "string") return null;
    try {
      const url = new URL(value, window.location.href);
      return ["http:", "https:", "data:", "blob:"].includes(url.protocol) ? url.href : null;
    } catch {
      return null;
    }
  }

  function queuePath(appId, path) {
    const tail = path && path !== "/" ? path : "";
    return `/queue/${OWNER}/${encodeURIComponent(appId)}${tail}`;
  }

  // -- the token ----------------------------------------------------------------------------------

  let tokenWaiters = [];

  function askToken(reason) {
    byId("token-reason").textContent = reason;
    byId("token-form").hidden = false;
    byId("token-input").value = "";
    byId("token-input").focus();
    return new Promise((resolve, reject) => tokenWaiters.push({ resolve, reject }));
  }

  function settleToken(given) {
    byId("token-form").hidden = true;
    const waiters = tokenWaiters;
    tokenWaiters = [];
    for (const waiter of waiters) {
      if (given) waiter.resolve();
      else waiter.reject(new Error("a token is needed to call this server"));
    }
    updateTokenButton();
  }

  function updateTokenButton() {
    byId("token-button").textContent = token ? "Change token" : "Set token";
  }

  // Every call of the page: the token in Authorization, and on 401 the page asks for one and tries again.
  async function call(path, init = {}) {
    for (;;) {
      const headers = { ...(init.headers || {}) };
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(path, { ...init, headers });
      if (response.status !== 401) return response;
      await askToken(token ? "The server refused this token: enter another." : "This server requires a token.");
    }
  }

  // The error of a failed answer: the queue API's {detail, error_type}, or Connect's {code, message}.
  async function errorOf(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (body && typeof body.detail === "string") return { message: body.detail, type: body.error_type || "" };
    if (body && typeof body.message === "string") return { message: body.message, type: body.code || "" };
    return { message: `${response.status} ${response.statusText}`, type: "" };
  }

  // -- banner -------------------------------------------------------------------------------------

  function showBanner(message) {
    const banner = byId("banner");
    banner.textContent = message;
    banner.hidden = false;
  }

  function hideBanner() {
    byId("banner").hidden = true;
    byId("banner").textContent = "";
  }

  // -- schemas ------------------------------------------------------------------------------------

  function without(object, ...keys) {
    const copy = { ...object };
    for (const key of keys) delete copy[key];
    return copy;
  }

  // A property's schema with what pydantic wraps around it taken off: `$ref`, a single `allOf`, and
  // `anyOf: [X, null]` (an Optional field) read as X; a union of constants reads as an enum.
  function resolve(schema, root, depth = 0) {
    if (!schema || typeof schema !== "object" || depth > 32) return {};
    if (typeof schema.$ref === "string") {
      const name = schema.$ref.replace(/^#\/(\$defs|definitions)\//, "");
      const target = (root.$defs || root.definitions || {})[name] || {};
      return resolve({ ...target, ...without(schema, "$ref") }, root, depth + 1);
    }
    if (Array.isArray(schema.allOf) && schema.allOf.length === 1) {
      return resolve({ ...schema.allOf[0], ...without(schema, "allOf") }, root, depth + 1);
    }
    const union = schema.anyOf || schema.oneOf;
    if (Array.isArray(union)) {
      const options = union.filter((option) => option.type !== "null");
      const rest = without(schema, "anyOf", "oneOf");
      if (options.length === 1) {
        return { ...resolve(options[0], root, depth + 1), ...rest, nullable: options.length < union.length };
      }
      if (options.length > 0 && options.every((option) => "const" in option)) {
        return { ...rest, enum: options.map((option) => option.const) };
      }
    }
    return schema;
  }

  // The playground hints: `ui.field`, else the name (`image_url` ⇒ image, `*_url` ⇒ file).
  function fileKind(name, schema) {
    const hinted = schema.ui && schema.ui.field;
    if (FILE_KINDS.includes(hinted)) return hinted;
    if (schema.type !== "string") return null;
    for (const kind of ["image", "video", "audio"]) if (name.endsWith(`${kind}_url`)) return kind;
    return name.endsWith("_url") ? "file" : null;
  }

  // Datasets: `image_urls` (and the others), or an array whose items carry a `ui.field` hint.
  function datasetKind(name, schema, root) {
    if (schema.type !== "array") return null;
    const items = resolve(schema.items, root);
    if (items.type && items.type !== "string") return null;
    const hinted = (schema.ui && schema.ui.field) || (items.ui && items.ui.field);
    if (FILE_KINDS.includes(hinted)) return hinted;
    for (const kind of ["image", "video", "audio"]) if (name.endsWith(`${kind}_urls`)) return kind;
    return name.endsWith("_urls") ? "file" : null;
  }

  // -- the form -----------------------------------------------------------------------------------

  class FieldProblem extends Error {
    constructor(path, message) {
      super(message);
      this.path = path;
    }
  }

  // What every field answers: its node, its value (undefined: left out of the input) and its error slot.
  function fieldShell(context, path, schema, required, labelFor, { legend = false } = {}) {
    const title = schema.title || path.split(".").pop();
    const help = schema.description ? el("p", { class: "help", id: `${labelFor}-help`, text: schema.description }) : null;
    const error = el("p", { class: "error", id: `${labelFor}-error`, hidden: true });
    const mark = required ? el("span", { class: "required", "aria-hidden": "true", text: " *" }) : null;
    const caption = legend
      ? el("legend", {}, title, mark, required ? el("span", { class: "visually-hidden", text: " (required)" }) : null)
      : el("label", { for: labelFor }, title, mark, required ? el("span", { class: "visually-hidden", text: " (required)" }) : null);
    const node = el(legend ? "fieldset" : "div", { class: "field", "data-path": path });
    const field = {
      node,
      caption,
      help,
      error,
      describedBy: [help && help.id, error.id].filter(Boolean).join(" "),
      controls: [],
      setError(message) {
        error.textContent = message;
        error.hidden = !message;
        for (const control of field.controls) {
          if (message) control.setAttribute("aria-invalid", "true");
          else control.removeAttribute("aria-invalid");
        }
      },
      focus() {
        if (field.controls[0]) field.controls[0].focus();
      },
      read: () => undefined,
    };
    context.fields.set(path, field);
    return field;
  }

  function describe(field, control) {
    control.setAttribute("aria-describedby", field.describedBy);
    field.controls.push(control);
    return control;
  }

  function buildField(context, name, schema, required, path) {
    const resolved = resolve(schema, context.root);
    const dataset = datasetKind(name, resolved, context.root);
    if (dataset) return datasetField(context, name, resolved, required, path, dataset);
    const kind = fileKind(name, resolved);
    if (kind) return fileField(context, resolved, required, path, kind);
    if (Array.isArray(resolved.enum)) return enumField(context, resolved, required, path);
    switch (resolved.type) {
      case "boolean":
        return booleanField(context, resolved, required, path);
      case "integer":
      case "number":
        return numberField(context, resolved, required, path);
      case "string":
        return stringField(context, name, resolved, required, path);
      case "array":
        return arrayField(context, name, resolved, required, path);
      case "object":
        if (resolved.properties) return objectField(context, resolved, required, path);
        return jsonField(context, resolved, required, path);
      default:
        return jsonField(context, resolved, required, path);
    }
  }

  function stringField(context, name, schema, required, path) {
    const id = newId(path);
    const field = fieldShell(context, path, schema, required, id);
    const long = /prompt|text|caption|description/.test(name) || (schema.maxLength || 0) > 200;
    const control = describe(
      field,
      el(long ? "textarea" : "input", {
        id,
        name: path,
        type: long ? undefined : "text",
        rows: long ? 3 : undefined,
        "aria-required": required ? "true" : undefined,
        maxlength: schema.maxLength,
        placeholder: schema.examples && schema.examples[0] !== undefined ? String(schema.examples[0]) : undefined,
      }),
    );
    if (typeof schema.default === "string") control.value = schema.default;
    field.read = () => (control.value === "" ? undefined : control.value);
    put(field.node, field.caption, control, field.help, field.error);
    return field;
  }

  function numberField(context, schema, required, path) {
    const id = newId(path);
    const field = fieldShell(context, path, schema, required, id);
    const integer = schema.type === "integer";
    const min = schema.minimum ?? schema.exclusiveMinimum;
    const max = schema.maximum ?? schema.exclusiveMaximum;
    const number = describe(
      field,
      el("input", {
        id,
        name: path,
        type: "number",
        inputmode: integer ? "numeric" : "decimal",
        min,
        max,
        step: integer ? 1 : "any",
        "aria-required": required ? "true" : undefined,
      }),
    );
    if (typeof schema.default === "number") number.value = String(schema.default);
    const row = el("div", { class: "number-row" });
    if (min !== undefined && max !== undefined) {
      // A slider for the range, the box for the exact value; each follows the other.
      const step = integer ? Math.max(1, Math.round((max - min) / 100)) : (max - min) / 100;
      const range = el("input", {
        type: "range",
        min,
        max,
        step,
        "aria-label": `${schema.title || path} (slider)`,
        tabindex: "-1",
      });
      range.value = number.value === "" ? String(min) : number.value;
      range.addEventListener("input", () => {
        number.value = range.value;
        number.dispatchEvent(new Event("input", { bubbles: true }));
      });
      number.addEventListener("input", () => {
        if (number.value !== "") range.value = number.value;
      });
      row.append(range);
    }
    row.append(number);
    field.read = () => (number.value === "" ? undefined : Number(number.value));
    put(field.node, field.caption, row, field.help, field.error);
    return field;
  }

  function booleanField(context, schema, required, path) {
    const id = newId(path);
    const field = fieldShell(context, path, schema, required, id);
    const control = describe(field, el("input", { id, name: path, type: "checkbox" }));
    control.checked = schema.default === true;
    field.read = () => control.checked;
    field.node.classList.add("checkbox");
    put(field.node, control, field.caption, field.help, field.error);
    return field;
  }

  function enumField(context, schema, required, path) {
    const id = newId(path);
    const field = fieldShell(context, path, schema, required, id);
    const control = describe(field, el("select", { id, name: path, "aria-required": required ? "true" : undefined }));
    if (!required || schema.default === undefined) control.append(el("option", { value: "", text: "—" }));
    schema.enum.forEach((value, index) => {
      control.append(el("option", { value: String(index), text: String(value) }));
      if (value === schema.default) control.value = String(index);
    });
    field.read = () => (control.value === "" ? undefined : schema.enum[Number(control.value)]);
    put(field.node, field.caption, control, field.help, field.error);
    return field;
  }

  // Anything the form has no widget for (a free-form object, a union): JSON typed in a text box.
  function jsonField(context, schema, required, path) {
    const id = newId(path);
    const field = fieldShell(context, path, schema, required, id);
    const control = describe(field, el("textarea", { id, name: path, rows: 3, class: "json", spellcheck: "false" }));
    if (schema.default !== undefined && schema.default !== null) control.value = JSON.stringify(schema.default, null, 2);
    field.read = (lenient) => {
      if (control.value.trim() === "") return undefined;
      try {
        return JSON.parse(control.value);
      } catch {
        if (lenient) return undefined;
        throw new FieldProblem(path, "not valid JSON");
      }
    };
    const hint = el("p", { class: "help", text: "JSON" });
    put(field.node, field.caption, control, hint, field.help, field.error);
    return field;
  }

  function objectField(context, schema, required, path) {
    const field = fieldShell(context, path, schema, required, newId(path), { legend: true });
    const children = buildProperties(context, schema, path);
    put(field.node, field.caption, field.help, ...children.map((child) => child.node), field.error);
    field.focus = () => children[0] && children[0].focus();
    field.read = (lenient) => {
      const value = readProperties(children, lenient);
      return Object.keys(value).length === 0 && !required ? undefined : value;
    };
    return field;
  }

  function arrayField(context, name, schema, required, path) {
    const field = fieldShell(context, path, schema, required, newId(path), { legend: true });
    const list = el("ol", { class: "items" });
    const items = [];
    const add = (value) => {
      const itemSchema = value === undefined ? schema.items || {} : { ...(schema.items || {}), default: value };
      const index = items.length;
      const item = buildField(context, name, { title: `Item ${index + 1}`, ...itemSchema }, false, `${path}.${index}`);
      const entry = { item, node: el("li", {}, item.node) };
      entry.node.append(
        el("button", {
          type: "button",
          class: "quiet",
          text: "Remove",
          "aria-label": `Remove item ${index + 1} of ${schema.title || name}`,
          onclick: () => {
            items.splice(items.indexOf(entry), 1);
            entry.node.remove();
            context.changed();
          },
        }),
      );
      items.push(entry);
      list.append(entry.node);
    };
    for (const value of Array.isArray(schema.default) ? schema.default : []) add(value);
    const addButton = describe(
      field,
      el("button", {
        type: "button",
        class: "quiet",
        text: "Add item",
        onclick: () => {
          add(undefined);
          items[items.length - 1].item.focus();
          context.changed();
        },
      }),
    );
    field.focus = () => (items[0] ? items[0].item.focus() : addButton.focus());
    field.read = (lenient) => {
      const values = items.map((entry) => entry.item.read(lenient)).filter((value) => value !== undefined);
      return values.length === 0 && !required && !Array.isArray(schema.default) ? undefined : values;
    };
    put(field.node, field.caption, field.help, list, addButton, field.error);
    return field;
  }

  // -- files: upload or URL, with a preview --------------------------------------------------------

  const ACCEPT = { image: "image/*", video: "video/*", audio: "audio/*", file: undefined };

  async function uploadFile(file) {
    const name = file.name || "upload";
    const response = await call(`/uploads/${encodeURIComponent(name)}`, {
      method: "PUT",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    if (!response.ok) {
      const failure = await errorOf(response);
      throw new Error(`upload of ${name} failed: ${failure.message}`);
    }
    const stored = await response.json();
    return stored.url;
  }

  function preview(kind, url, label) {
    const source = safeUrl(url);
    if (!source) return el("span", { class: "help", text: "No preview for this URL." });
    if (kind === "image") {
      const caption = el("span", { class: "help" });
      const image = el("img", { alt: `Preview of ${label}`, class: "thumb" });
      image.addEventListener("load", () => {
        caption.textContent = `${image.naturalWidth}×${image.naturalHeight} px`;
      });
      image.addEventListener("error", () => {
        caption.textContent = "The image did not load.";
      });
      image.src = source;
      return el("span", { class: "preview-item" }, image, caption);
    }
    if (kind === "video" || kind === "audio") {
      const player = el(kind, { controls: true, preload: "metadata", "aria-label": `Preview of ${label}` });
      player.src = source;
      return player;
    }
    const link = el("a", { target: "_blank", rel: "noopener noreferrer", text: url.split("/").pop() || url });
    link.href = source;
    return link;
  }

  // The drop zone shared by single files and datasets: a file input, drag and drop, and upload status.
  function dropZone(context, field, id, kind, multiple, onUploaded) {
    const status = el("p", { class: "upload-status", role: "status" });
    const picker = describe(
      field,
      el("input", { id, type: "file", accept: ACCEPT[kind], multiple: multiple || undefined, class: "file-picker" }),
    );
    const zone = el(
      "div",
      { class: "drop" },
      el("label", { for: id, class: "drop-label", text: multiple ? "Upload files" : "Upload a file" }),
      picker,
      el("span", { class: "help", text: "or drop here" }),
    );
    // One file after another, so a dataset keeps the order the files were chosen in.
    const upload = (files) => {
      const pending = (async () => {
        for (const file of files) {
          status.textContent = `Uploading ${file.name}…`;
          try {
            const url = await uploadFile(file);
            status.textContent = `Uploaded ${file.name}.`;
            onUploaded(url, file.name);
          } catch (error) {
            status.textContent = "";
            field.setError(error.message);
          }
        }
      })();
      context.pending.add(pending);
      pending.finally(() => context.pending.delete(pending));
    };
    picker.addEventListener("change", () => {
      upload([...picker.files]);
      picker.value = "";
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const files = [...event.dataTransfer.files];
      upload(multiple ? files : files.slice(0, 1));
    });
    return { zone, status };
  }

  function fileField(context, schema, required, path, kind) {
    const id = newId(path);
    const urlId = `${id}-url`;
    const field = fieldShell(context, path, schema, required, urlId);
    const url = describe(
      field,
      el("input", {
        id: urlId,
        name: path,
        type: "url",
        inputmode: "url",
        placeholder: "https://… or data:…",
        "aria-required": required ? "true" : undefined,
      }),
    );
    const shown = el("div", { class: "preview" });
    const show = () => shown.replaceChildren(url.value ? preview(kind, url.value, schema.title || path) : "");
    const { zone, status } = dropZone(context, field, `${id}-file`, kind, false, (uploaded) => {
      url.value = uploaded;
      show();
      context.changed();
    });
    url.addEventListener("change", show);
    if (typeof schema.default === "string") {
      url.value = schema.default;
      show();
    }
    field.read = () => (url.value === "" ? undefined : url.value);
    field.node.classList.add("file-field");
    put(field.node, field.caption, url, zone, status, shown, field.help, field.error);
    return field;
  }

  function datasetField(context, name, schema, required, path, kind) {
    const id = newId(path);
    const field = fieldShell(context, path, schema, required, `${id}-file`, { legend: true });
    const urls = [];
    const list = el("ul", { class: "dataset" });
    const render = () => {
      list.replaceChildren(
        ...urls.map((url, index) =>
          el(
            "li",
            {},
            preview(kind, url, `item ${index + 1}`),
            el("span", { class: "url", text: url }),
            el("button", {
              type: "button",
              class: "quiet",
              text: "Remove",
              "aria-label": `Remove item ${index + 1}`,
              onclick: () => {
                urls.splice(index, 1);
                render();
                context.changed();
              },
            }),
          ),
        ),
      );
    };
    const added = (url) => {
      urls.push(url);
      render();
      context.changed();
    };
    const { zone, status } = dropZone(context, field, `${id}-file`, kind, true, added);
    const typed = describe(field, el("input", { id: `${id}-url`, type: "url", placeholder: "https://…" }));
    const addUrl = () => {
      if (typed.value.trim()) added(typed.value.trim());
      typed.value = "";
    };
    typed.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        addUrl();
      }
    });
    const byUrl = el(
      "div",
      { class: "add-url" },
      el("label", { for: `${id}-url`, text: "Add by URL" }),
      typed,
      el("button", { type: "button", class: "quiet", text: "Add", onclick: addUrl }),
    );
    for (const value of Array.isArray(schema.default) ? schema.default : []) urls.push(value);
    render();
    field.read = () => (urls.length === 0 && !required ? undefined : [...urls]);
    field.node.classList.add("file-field");
    put(field.node, field.caption, zone, status, list, byUrl, field.help, field.error);
    return field;
  }

  // -- a whole form -------------------------------------------------------------------------------

  // An object's own default (pydantic writes one for a nested model's default instance) fills in its fields'.
  function buildProperties(context, schema, prefix) {
    const required = new Set(schema.required || []);
    const defaults = schema.default && typeof schema.default === "object" ? schema.default : {};
    return Object.entries(schema.properties || {}).map(([name, property]) => {
      const given = name in defaults ? { ...property, default: defaults[name] } : property;
      return buildField(context, name, given, required.has(name), prefix ? `${prefix}.${name}` : name);
    });
  }

  function readProperties(children, lenient) {
    const value = {};
    for (const child of children) {
      const read = child.read(lenient);
      if (read !== undefined) value[child.node.dataset.path.split(".").pop()] = read;
    }
    return value;
  }

  function buildForm(schema, onChange) {
    const context = { root: schema, fields: new Map(), pending: new Set(), changed: onChange };
    const children = buildProperties(context, resolve(schema, schema), "");
    return {
      context,
      nodes: children.map((child) => child.node),
      read: (lenient = false) => readProperties(children, lenient),
    };
  }

  function clearFieldErrors() {
    if (!state.form) return;
    for (const field of state.form.context.fields.values()) field.setError("");
  }

  // "invalid input: a.b: message; c: message" ⇒ each message under its field (or the nearest field above
  // it); what names no field of the form goes to the banner.
  function showInputErrors(detail) {
    const unplaced = [];
    let first = null;
    const text = detail.replace(/^invalid input:\s*/, "");
    for (const problem of text.split("; ")) {
      const split = problem.indexOf(": ");
      let path = split > 0 ? problem.slice(0, split) : "";
      const message = split > 0 ? problem.slice(split + 2) : problem;
      let field = null;
      while (path && !(field = state.form.context.fields.get(path))) {
        path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
      }
      if (field) {
        field.setError(field.error.hidden ? message : `${field.error.textContent}; ${message}`);
        first = first || field;
      } else {
        unplaced.push(problem);
      }
    }
    if (unplaced.length) showBanner(`Invalid input: ${unplaced.join("; ")}`);
    else showBanner("Invalid input: see the fields marked below.");
    if (first) first.focus();
  }

  // -- apps and endpoints -------------------------------------------------------------------------

  async function loadApps() {
    const status = byId("apps-status");
    let response;
    try {
      response = await call("/ferry.v1.InferenceService/ListEndpoints", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Connect-Protocol-Version": "1" },
        body: "{}",
      });
    } catch (error) {
      status.textContent = "Could not list the apps.";
      showBanner(error.message);
      return;
    }
    if (!response.ok) {
      const failure = await errorOf(response);
      status.textContent = "Could not list the apps.";
      showBanner(failure.message);
      return;
    }
    const listing = await response.json();
    state.apps = (listing.apps || []).map((app) => ({
      id: app.appId,
      machineType: app.machineType || "",
      endpoints: (app.endpoints || []).map((endpoint) => ({
        appId: app.appId,
        path: endpoint.path || "/",
        realtime: Boolean(endpoint.realtime),
        description: endpoint.description || "",
        input: parseSchema(endpoint.inputSchemaJson),
        output: parseSchema(endpoint.outputSchemaJson),
      })),
    }));
    status.textContent = state.apps.length ? "" : "This server hosts no apps.";
    renderApps();
    route();
  }

  function parseSchema(text) {
    try {
      return JSON.parse(text || "{}");
    } catch {
      return {};
    }
  }

  function endpointHash(endpoint) {
    return `#/${encodeURIComponent(endpoint.appId)}${endpoint.path}`;
  }

  function endpointDescription(endpoint) {
    // The handler's docstring; else what its input model says of itself.
    return endpoint.description || endpoint.input.description || endpoint.output.description || "";
  }

  function renderApps() {
    byId("apps").replaceChildren(
      ...state.apps.map((app) =>
        el(
          "li",
          {},
          el("span", { class: "app-name", text: app.id }),
          app.machineType ? el("span", { class: "machine", text: app.machineType }) : null,
          el(
            "ul",
            { class: "endpoints" },
            ...app.endpoints.map((endpoint) =>
              el(
                "li",
                {},
                el("a", { href: endpointHash(endpoint), "data-endpoint": `${endpoint.appId}${endpoint.path}` }, el("code", { text: endpoint.path })),
                endpoint.realtime ? el("span", { class: "help", text: " realtime" }) : null,
                endpointDescription(endpoint) ? el("p", { class: "help", text: endpointDescription(endpoint) }) : null,
              ),
            ),
          ),
        ),
      ),
    );
  }

  function route() {
    const hash = decodeURIComponent(window.location.hash.replace(/^#\//, ""));
    const all = state.apps.flatMap((app) => app.endpoints);
    const wanted = all.find((endpoint) => `${endpoint.appId}${endpoint.path}` === hash || (hash === endpoint.appId && endpoint.path === "/"));
    const endpoint = wanted || (hash ? null : all[0]);
    if (!endpoint) {
      if (hash) showBanner(`No endpoint ${hash} on this server.`);
      return;
    }
    showEndpoint(endpoint);
  }

  function showEndpoint(endpoint) {
    stopFollowing();
    hideBanner();
    state.endpoint = endpoint;
    for (const link of document.querySelectorAll("[data-endpoint]")) {
      if (link.dataset.endpoint === `${endpoint.appId}${endpoint.path}`) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    byId("pick").hidden = true;
    byId("endpoint-view").hidden = false;
    byId("endpoint-title").textContent = `${endpoint.appId} ${endpoint.path}`;
    byId("endpoint-description").textContent = endpointDescription(endpoint);
    byId("run").hidden = true;
    byId("outputs").hidden = true;
    byId("cancel").disabled = true;
    resetForm();
  }

  function resetForm() {
    const endpoint = state.endpoint;
    state.form = buildForm(endpoint.input, updateCode);
    byId("fields").replaceChildren(...state.form.nodes);
    updateCode();
  }

  // -- running a request --------------------------------------------------------------------------

  async function submit(event) {
    event.preventDefault();
    const endpoint = state.endpoint;
    if (!endpoint) return;
    hideBanner();
    clearFieldErrors();
    if (state.form.context.pending.size) {
      setStatus("Waiting for uploads…");
      await Promise.allSettled([...state.form.context.pending]);
    }
    let input;
    try {
      input = state.form.read();
    } catch (error) {
      if (!(error instanceof FieldProblem)) throw error;
      state.form.context.fields.get(error.path).setError(error.message);
      state.form.context.fields.get(error.path).focus();
      return;
    }
    stopFollowing();
    byId("submit").disabled = true;
    try {
      const response = await call(queuePath(endpoint.appId, endpoint.path), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(input),
      });
      if (!response.ok) {
        const failure = await errorOf(response);
        if (failure.type === "INVALID_INPUT") showInputErrors(failure.message);
        else showBanner(`${failure.message}${failure.type ? ` (${failure.type})` : ""}`);
        return;
      }
      const submitted = await response.json();
      follow(endpoint, submitted.request_id);
    } catch (error) {
      showBanner(error.message);
    } finally {
      byId("submit").disabled = false;
    }
  }

  function setStatus(text) {
    byId("run").hidden = false;
    byId("run-status").textContent = text;
  }

  function setProgress(fraction) {
    const bar = byId("run-progress");
    if (fraction === null) bar.removeAttribute("value");
    else bar.value = Math.min(1, Math.max(0, fraction));
  }

  function stopFollowing() {
    if (state.run) {
      state.run.abort.abort();
      state.run = null;
    }
    byId("cancel").disabled = true;
  }

  async function cancel() {
    const run = state.run;
    if (!run) return;
    byId("cancel").disabled = true;
    setStatus("Cancelling…");
    const path = `${queuePath(run.endpoint.appId, "/")}/requests/${encodeURIComponent(run.id)}/cancel`;
    try {
      const response = await call(path, { method: "PUT" });
      if (!response.ok && response.status !== 400) showBanner((await errorOf(response)).message);
    } catch (error) {
      showBanner(error.message);
    }
  }

  // Follows the request over Connect's InferenceService/Stream (its request id: the history, then live
  // events): queue position, logs, progress and partial outputs, then the output or the failure.
  async function follow(endpoint, requestId) {
    const run = { endpoint, id: requestId, abort: new AbortController(), started: performance.now(), logs: 0 };
    state.run = run;
    byId("run").dataset.requestId = requestId;
    byId("run-logs").replaceChildren();
    byId("run-log-count").textContent = "0";
    byId("outputs").hidden = true;
    byId("cancel").disabled = false;
    setStatus(`Submitted (request ${requestId}).`);
    setProgress(null);
    const message = new TextEncoder().encode(JSON.stringify({ requestId }));
    const frame = new Uint8Array(5 + message.length);
    new DataView(frame.buffer).setUint32(1, message.length);
    frame.set(message, 5);
    try {
      const response = await call("/ferry.v1.InferenceService/Stream", {
        method: "POST",
        headers: { "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1" },
        body: frame,
        signal: run.abort.signal,
      });
      if (!response.ok) throw new Error((await errorOf(response)).message);
      for await (const [flags, event] of frames(response.body.getReader())) {
        if (state.run !== run) return;
        if (flags & END_STREAM) {
          if (event.error) throw new Error(event.error.message || event.error.code);
          break;
        }
        onEvent(run, event);
      }
    } catch (error) {
      if (run.abort.signal.aborted) return;
      setStatus("Lost the request's events.");
      showBanner(error.message);
    } finally {
      if (state.run === run) {
        state.run = null;
        byId("cancel").disabled = true;
      }
    }
  }

  async function* frames(reader) {
    let buffer = new Uint8Array(0);
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer);
      joined.set(value, buffer.length);
      buffer = joined;
      while (buffer.length >= 5) {
        const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
        if (buffer.length < 5 + length) break;
        yield [buffer[0], JSON.parse(decoder.decode(buffer.subarray(5, 5 + length)))];
        buffer = buffer.slice(5 + length);
      }
    }
  }

  function onEvent(run, event) {
    const seconds = ((performance.now() - run.started) / 1000).toFixed(1);
    if (event.queued) {
      const position = event.queued.position || 0;
      setStatus(position === 0 ? "In queue: next to run." : `In queue: position ${position}.`);
      setProgress(null);
    } else if (event.inProgress) {
      for (const line of event.inProgress.logs || []) appendLog(run, line);
      const progress = event.inProgress.progress;
      if (progress && progress.total > 0) {
        const fraction = (progress.current || 0) / progress.total;
        const label = progress.message ? ` ${progress.message}` : "";
        setStatus(`Running: ${progress.current || 0} of ${progress.total} (${Math.round(fraction * 100)}%)${label}.`);
        setProgress(fraction);
      } else {
        setStatus(progress && progress.message ? `Running: ${progress.message}.` : "Running…");
        setProgress(null);
      }
    } else if (event.partialOutput) {
      renderOutput(run.endpoint, parseSchema(event.partialOutput.outputJson), true);
    } else if (event.completed) {
      setStatus(`Completed in ${seconds} s.`);
      setProgress(1);
      renderOutput(run.endpoint, parseSchema(event.completed.outputJson), false);
    } else if (event.failed) {
      const error = event.failed.error || {};
      if (error.code === CANCELLED) {
        setStatus(`Cancelled after ${seconds} s.`);
      } else {
        setStatus(`Failed after ${seconds} s.`);
        if (error.reason === "INVALID_INPUT") showInputErrors(error.message || "");
        else showBanner(`${error.message || "The request failed."}${error.reason ? ` (${error.reason})` : ""}`);
      }
      setProgress(0);
    }
  }

  function appendLog(run, line) {
    run.logs += 1;
    byId("run-log-count").textContent = String(run.logs);
    const time = line.time ? new Date(line.time).toLocaleTimeString() : "";
    byId("run-logs").append(
      el("li", { class: `log-${(line.level || "info").toLowerCase()}` }, el("time", { text: time }), ` ${line.message || ""}`),
    );
  }

  // -- outputs ------------------------------------------------------------------------------------

  function outputKind(value, schema) {
    const preview = schema.ui && schema.ui.preview;
    if (FILE_KINDS.includes(preview)) return preview;
    if (!value || typeof value !== "object" || typeof value.url !== "string") return null;
    const title = (schema.title || "").toLowerCase();
    if (FILE_KINDS.includes(title)) return title;
    const type = value.content_type || "";
    for (const kind of ["image", "video", "audio"]) if (type.startsWith(`${kind}/`)) return kind;
    return "file";
  }

  function renderOutput(endpoint, output, partial) {
    byId("outputs").hidden = false;
    byId("outputs-heading").textContent = partial ? "Output (partial)" : "Output";
    byId("output-json").textContent = JSON.stringify(output, null, 2);
    const root = endpoint.output;
    const schema = resolve(root, root);
    const properties = schema.properties || {};
    const items = [];
    if (output && typeof output === "object" && !Array.isArray(output)) {
      for (const [name, value] of Object.entries(output)) {
        items.push(renderValue(name, value, resolve(properties[name], root), root));
      }
    } else {
      items.push(renderValue("output", output, schema, root));
    }
    byId("output-items").replaceChildren(...items);
  }

  function renderValue(name, value, schema, root) {
    const kind = outputKind(value, schema);
    if (kind) return renderFile(name, value, kind);
    if (Array.isArray(value) && value.length) {
      const itemSchema = resolve(schema.items, root);
      if (value.every((item) => outputKind(item, itemSchema))) {
        return el("div", { class: "output" }, el("h4", { text: name }), ...value.map((item, index) => renderFile(`${name} ${index + 1}`, item, outputKind(item, itemSchema))));
      }
    }
    return el("div", { class: "output" }, el("h4", { text: name }), el("pre", { class: "code", text: JSON.stringify(value, null, 2) }));
  }

  function renderFile(name, file, kind) {
    const source = safeUrl(file.url);
    const fileName = file.file_name || (file.url || "").split("/").pop();
    const facts = el("span", { class: "facts" });
    const size = formatBytes(file.file_size);
    const download = el("a", { download: fileName, text: `Download ${fileName}` });
    if (source) download.href = source;
    const caption = el("figcaption", {}, el("strong", { text: name }), " ", facts, " ", download);
    const known = [];
    if (kind === "image" && file.width && file.height) known.push(`${file.width}×${file.height} px`);
    if ((kind === "video" || kind === "audio") && file.duration_seconds) known.push(`${Number(file.duration_seconds).toFixed(1)} s`);
    if (kind === "video" && file.fps) known.push(`${file.fps} fps`);
    if (size) known.push(size);
    facts.textContent = known.join(" · ");
    if (!source) return el("figure", { class: "output" }, caption);
    if (kind === "image") {
      const image = el("img", { alt: `${name}: ${fileName}`, class: "output-image" });
      image.addEventListener("load", () => {
        if (!(file.width && file.height)) {
          facts.textContent = [`${image.naturalWidth}×${image.naturalHeight} px`, ...known].join(" · ");
        }
      });
      image.src = source;
      const zoom = el("button", { type: "button", class: "quiet", "aria-pressed": "false", text: "Actual size" });
      const frame = el("div", { class: "viewer" }, image);
      zoom.addEventListener("click", () => {
        const actual = frame.classList.toggle("actual");
        zoom.setAttribute("aria-pressed", String(actual));
        zoom.textContent = actual ? "Fit to width" : "Actual size";
      });
      return el("figure", { class: "output output-image-box", "data-kind": kind }, frame, caption, zoom);
    }
    if (kind === "video" || kind === "audio") {
      const player = el(kind, { controls: true, preload: "auto", playsinline: kind === "video" || undefined, "aria-label": `${name}: ${fileName}` });
      player.src = source;
      return el("figure", { class: "output", "data-kind": kind }, player, caption);
    }
    return el("figure", { class: "output", "data-kind": kind }, caption);
  }

  // -- copy as code -------------------------------------------------------------------------------

  const LANGUAGES = [
    ["curl", "curl"],
    ["python", "Python (ferry)"],
    ["fal", "Python (fal_client)"],
  ];

  function python(value, indent = "") {
    const inner = `${indent}    `;
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
    if (Array.isArray(value)) {
      if (value.length === 0) return "[]";
      return `[\n${value.map((item) => `${inner}${python(item, inner)},`).join("\n")}\n${indent}]`;
    }
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    return `{\n${entries.map(([key, item]) => `${inner}${JSON.stringify(key)}: ${python(item, inner)},`).join("\n")}\n${indent}}`;
  }

  function shellQuote(text) {
    return `'${text.replace(/'/g, `'"'"'`)}'`;
  }

  function codeFor(language, endpoint, input) {
    const origin = window.location.origin;
    const path = endpoint.path === "/" ? "" : endpoint.path;
    const auth = token ? ' \\\n  -H "Authorization: Bearer $FERRY_TOKEN"' : "";
    if (language === "curl") {
      return [
        `curl -X POST "${origin}${queuePath(endpoint.appId, endpoint.path)}"${auth} \\`,
        `  -H "Content-Type: application/json" \\`,
        `  -d ${shellQuote(JSON.stringify(input))}`,
        "",
        "# then follow it, and read the result:",
        `curl -N "${origin}${queuePath(endpoint.appId, "/")}/requests/$REQUEST_ID/status/stream?logs=1"${token ? ' -H "Authorization: Bearer $FERRY_TOKEN"' : ""}`,
        `curl "${origin}${queuePath(endpoint.appId, "/")}/requests/$REQUEST_ID"${token ? ' -H "Authorization: Bearer $FERRY_TOKEN"' : ""}`,
      ].join("\n");
    }
    if (language === "python") {
      const pathArgument = path ? `, path=${JSON.stringify(path)}` : "";
      return [
        "import ferry",
        "",
        "# The stack at FERRY_ADDRESS (its gRPC host:port), with FERRY_TOKEN when it needs one.",
        `output = ferry.subscribe(${JSON.stringify(endpoint.appId)}, ${python(input)}${pathArgument}, with_logs=True)`,
        "print(output)",
      ].join("\n");
    }
    const host = window.location.host;
    return [
      "import fal_client",
      "",
      `# FAL_QUEUE_RUN_HOST=${host}/queue FAL_RUN_HOST=${host}/run${token ? " FAL_KEY=$FERRY_TOKEN" : ""}`,
      "# (the client speaks https only: serve with --tls-cert/--tls-key)",
      `output = fal_client.subscribe(${JSON.stringify(`${OWNER}/${endpoint.appId}${path}`)}, arguments=${python(input)}, with_logs=True)`,
      "print(output)",
    ].join("\n");
  }

  function renderTabs() {
    const tabs = byId("code-tabs");
    tabs.replaceChildren(
      ...LANGUAGES.map(([key, label]) =>
        el("button", {
          type: "button",
          role: "tab",
          id: `code-tab-${key}`,
          "aria-selected": String(state.language === key),
          "aria-controls": "code-text",
          tabindex: state.language === key ? "0" : "-1",
          text: label,
          onclick: () => selectLanguage(key),
        }),
      ),
    );
    tabs.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
      const index = LANGUAGES.findIndex(([key]) => key === state.language);
      const next = (index + (event.key === "ArrowRight" ? 1 : LANGUAGES.length - 1)) % LANGUAGES.length;
      selectLanguage(LANGUAGES[next][0]);
      byId(`code-tab-${LANGUAGES[next][0]}`).focus();
    });
  }

  function selectLanguage(key) {
    state.language = key;
    for (const [other] of LANGUAGES) {
      const tab = byId(`code-tab-${other}`);
      tab.setAttribute("aria-selected", String(other === key));
      tab.tabIndex = other === key ? 0 : -1;
    }
    byId("code-text").setAttribute("aria-labelledby", `code-tab-${key}`);
    updateCode();
  }

  function updateCode() {
    if (!state.endpoint || !state.form) return;
    byId("code-text").textContent = codeFor(state.language, state.endpoint, state.form.read(true));
    byId("code-copied").textContent = "";
  }

  async function copyCode() {
    const text = byId("code-text").textContent;
    try {
      await navigator.clipboard.writeText(text);
      byId("code-copied").textContent = "Copied.";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(byId("code-text"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      byId("code-copied").textContent = "Selected: press Ctrl+C to copy.";
    }
  }

  // -- start --------------------------------------------------------------------------------------

  function start() {
    updateTokenButton();
    byId("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      token = byId("token-input").value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
      byId("token-input").value = "";
      settleToken(Boolean(token));
      updateCode();
    });
    byId("token-cancel").addEventListener("click", () => settleToken(false));
    byId("token-button").addEventListener("click", () => {
      askToken("Enter the server's token.").then(
        () => (state.apps.length ? undefined : loadApps()),
        () => undefined,
      );
    });
    byId("input-form").addEventListener("submit", submit);
    byId("input-form").addEventListener("input", updateCode);
    byId("input-form").addEventListener("change", updateCode);
    byId("cancel").addEventListener("click", cancel);
    byId("reset").addEventListener("click", () => {
      hideBanner();
      resetForm();
    });
    byId("code-copy").addEventListener("click", copyCode);
    window.addEventListener("hashchange", () => {
      route();
      byId("endpoint").focus();
    });
    renderTabs();
    loadApps();
  }

  start();
})();
