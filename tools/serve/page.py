"""The served web page at ``/``: pick an image, type classes, see the overlay and the pixel
fractions (one HTML string, no external URL; the image goes to ``POST /segment`` as the raw
request body)."""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ovs: segment an image</title>
<style>body{font:15px system-ui,sans-serif;margin:2em auto;max-width:1000px}
label{display:block;margin:.6em 0}input[type=text]{width:40em}
#error{color:#b00}img{max-width:100%;image-rendering:pixelated}
td{padding:2px 8px}</style></head>
<body>
<h1>Segment an image with your own words</h1>
<form id="form">
<label>Image (PNG, JPEG, WebP) <input id="file" type="file" accept="image/*" required></label>
<label>Classes, comma-separated; synonyms with | <input id="classes" type="text"
 value="sky,tree|bush,grass,building"></label>
<label>Background threshold (optional, 0-1) <input id="bg" type="number" min="0" max="1"
 step="0.01"></label>
<button id="submit" type="submit">Segment</button> <span id="status"></span>
</form>
<p id="error"></p>
<img id="overlay" alt="">
<table id="fractions"></table>
<script>
document.getElementById('form').addEventListener('submit', async function (ev) {
  ev.preventDefault();
  const file = document.getElementById('file').files[0];
  const err = document.getElementById('error'), status = document.getElementById('status');
  err.textContent = ''; status.textContent = 'segmenting...';
  const q = new URLSearchParams({classes: document.getElementById('classes').value});
  const bg = document.getElementById('bg').value;
  if (bg !== '') q.set('bg_threshold', bg);
  try {
    const r = await fetch('segment?' + q, {method: 'POST', body: file,
      headers: {'Content-Type': file.type || 'application/octet-stream'}});
    const j = await r.json();
    if (!r.ok) { err.textContent = j.error; status.textContent = ''; return; }
    document.getElementById('overlay').src = 'data:image/png;base64,' + j.overlay_png;
    const t = document.getElementById('fractions'); t.innerHTML = '';
    for (const [name, f] of Object.entries(j.fractions)) {
      const row = t.insertRow(); row.className = 'fraction';
      row.insertCell().textContent = name;
      row.insertCell().textContent = (100 * f).toFixed(1) + ' %';
    }
    status.textContent = 'done';
  } catch (e) { err.textContent = String(e); status.textContent = ''; }
});
</script></body></html>
"""
