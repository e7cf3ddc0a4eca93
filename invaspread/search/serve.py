"""``invaspread serve INDEX``: a local page over an index: a grid of its images; click one, or upload one, and
see its k nearest neighbours with their scores and paths.

Flask, one HTML page with a little plain JavaScript, no build step. Requests name images by their row in the
index, never by path: ``/image/ROW`` serves the file the index lists at that row, and only when it is still a
regular file inside a folder the index was built from (a symlink leading out of it is refused), else 404.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import List

import numpy as np

from ..errors import InvaspreadError
from .index import SearchIndex

PAGE_SIZE = 200       # images per grid page
MAX_UPLOAD = 32 << 20  # bytes of an uploaded query image


def image_roots(index: SearchIndex) -> List[str]:
    """The folders the index was built and grown from, as real paths: what ``/image`` may serve from."""
    folders = [index.meta.get("images"), *(a.get("images") for a in index.meta.get("added", []))]
    return [os.path.realpath(os.path.expanduser(f)) for f in folders if f]


def servable(path: str, roots: List[str]) -> bool:
    """``path`` is a regular file whose real location lies inside one of ``roots``."""
    real = os.path.realpath(path)
    return os.path.isfile(real) and any(os.path.commonpath([real, root]) == root for root in roots)


def create_app(index_folder, k: int = 8):
    """The Flask application over ``index_folder`` (checked whole when it opens, as ``search`` does)."""
    try:
        from flask import Flask, abort, jsonify, request, send_file
    except ImportError:
        raise InvaspreadError("serve needs Flask: pip install 'invaspread[serve]'") from None
    from PIL import Image, UnidentifiedImageError

    index = SearchIndex(index_folder)
    roots = image_roots(index)
    app = Flask("invaspread.serve")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD

    def neighbours(queries, exclude_row=None):
        scores, rows = index.search(queries, k + (exclude_row is not None))
        hits = [{"row": int(r), "path": index.paths[r], "score": round(float(s), 4)}
                for s, r in zip(scores[0], rows[0]) if r >= 0 and r != exclude_row]
        return jsonify({"results": hits[:k]})

    @app.get("/")
    def page():
        return PAGE_HTML.replace("{{COUNT}}", str(len(index.paths))).replace("{{K}}", str(k)).replace(
            "{{PAGE_SIZE}}", str(PAGE_SIZE)).replace("{{NAME}}", _html(Path(index_folder).name))

    @app.get("/images")
    def listing():
        start = max(request.args.get("start", 0, type=int), 0)
        rows = range(start, min(start + PAGE_SIZE, len(index.paths)))
        return jsonify({"count": len(index.paths), "images": [{"row": r, "path": index.paths[r]} for r in rows]})

    @app.get("/image/<int:row>")
    def image(row):
        if not 0 <= row < len(index.paths) or not servable(index.paths[row], roots):
            abort(404)
        return send_file(os.path.realpath(index.paths[row]))

    @app.get("/neighbours/<int:row>")
    def of_row(row):
        if not 0 <= row < len(index.paths):
            abort(404)
        return neighbours(np.array(index.embeddings[row:row + 1]), exclude_row=row)   # a copy: maps are read-only

    @app.post("/query")
    def upload():
        file = request.files.get("image")
        if file is None:
            return jsonify({"error": "no file in the form field 'image'"}), 400
        data = file.read()
        try:
            Image.open(io.BytesIO(data)).verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            return jsonify({"error": f"{file.filename!s:.100} is not an image this page can read"}), 400
        query = Path(_upload_file(data))
        try:
            return neighbours(index.embed([str(query)]))
        finally:
            query.unlink(missing_ok=True)

    return app


def _upload_file(data: bytes) -> str:
    """The uploaded bytes in a private temporary file (the index embeds files), removed after the query."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="invaspread-query-", suffix=".img")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def serve(index_folder, host: str = "127.0.0.1", port: int = 8000, k: int = 8, log=print) -> None:
    """Serve the page until Ctrl-C."""
    from werkzeug.serving import make_server

    app = create_app(index_folder, k)
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as err:
        raise InvaspreadError(f"serve --host {host} --port {port}: cannot listen there ({err.strerror}); choose "
                              f"another --port") from err
    log(f"{index_folder}: http://{host}:{server.server_port}/  (Ctrl-C stops)")
    server.serve_forever()


PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{NAME}} - invaspread</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1em; }
 #grid img, #results img { width: 96px; height: 96px; object-fit: cover; margin: 2px; cursor: pointer; }
 #results figure { display: inline-block; margin: 4px; text-align: center; width: 110px; }
 #results figcaption { font-size: 11px; word-break: break-all; }
 #query img { width: 160px; }
</style></head>
<body>
<h1>{{NAME}}: {{COUNT}} images</h1>
<p>Click an image, or upload one: its {{K}} nearest neighbours (cosine similarity of the embeddings; read the
scores as a ranking).</p>
<form id="upload"><input type="file" id="file" name="image" accept="image/*"></form>
<div id="query"></div>
<div id="results"></div>
<h2>The index</h2>
<div id="grid"></div>
<button id="more" hidden>more</button>
<script>
let next = 0;
function thumb(row, path) {
  const img = document.createElement("img");
  img.src = "/image/" + row; img.alt = path; img.title = path; img.dataset.row = row;
  img.onclick = () => showNeighbours("/neighbours/" + row, {}, img.src);
  return img;
}
async function loadPage() {
  const reply = await (await fetch("/images?start=" + next)).json();
  for (const item of reply.images) document.getElementById("grid").append(thumb(item.row, item.path));
  next += reply.images.length;
  document.getElementById("more").hidden = next >= reply.count;
}
async function showNeighbours(url, options, src) {
  document.getElementById("results").dataset.done = "";
  document.getElementById("query").innerHTML = "<img alt='query' src='" + src + "'>";
  const reply = await (await fetch(url, options)).json();
  const results = document.getElementById("results");
  results.replaceChildren();
  if (reply.error) { results.textContent = reply.error; return; }
  for (const hit of reply.results) {
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    caption.textContent = hit.score.toFixed(4) + " " + hit.path;
    figure.className = "hit"; figure.dataset.row = hit.row; figure.dataset.score = hit.score;
    figure.append(thumb(hit.row, hit.path), caption);
    results.append(figure);
  }
  results.dataset.done = "yes";
}
document.getElementById("file").onchange = (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const form = new FormData(); form.append("image", file);
  showNeighbours("/query", {method: "POST", body: form}, URL.createObjectURL(file));
};
document.getElementById("more").onclick = loadPage;
loadPage();
</script>
</body></html>
"""
