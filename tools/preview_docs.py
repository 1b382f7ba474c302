"""Render a static preview of the docs site from nbdev's processed notebooks (`nbdev-proc-nbs` -> `_proc/`).

Quarto (what `nbdev-docs` uses) cannot be installed on every machine; pandoc can (`apt-get install pandoc`), and
it is the engine Quarto itself runs on. This script does Quarto's part that matters for reading the docs:
each processed notebook becomes one HTML page named by its `output-file`, with the sidebar of `sidebar.yml`,
code cells (minus `#|` directives, hidden when `echo: false`), their outputs (markdown from `show_doc`, HTML,
text, and PNG plots written as image files), and links between pages made relative.

Usage: python tools/preview_docs.py [--proc _proc] [--out _preview] [--run-proc]
"""
import argparse, base64, html, json, re, shutil, subprocess, sys
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parent.parent
SITE_URL = 'https://entrenar.github.io/entrenar/'

CSS = """
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;line-height:1.5}
#sidebar{position:fixed;top:0;left:0;bottom:0;width:230px;overflow-y:auto;background:#f6f8fa;border-right:1px solid #ddd;padding:16px}
#sidebar .site{font-weight:700;font-size:1.3em;display:block;margin-bottom:12px;color:#1a5fb4;text-decoration:none}
#sidebar ul{list-style:none;padding-left:0;margin:0}#sidebar ul ul{padding-left:12px}
#sidebar li{margin:3px 0}#sidebar a{color:#333;text-decoration:none}#sidebar a.active{font-weight:700;color:#1a5fb4}
#sidebar .section{font-weight:600;color:#666;margin-top:10px;text-transform:uppercase;font-size:.8em}
main{margin-left:262px;max-width:1000px;padding:16px 32px}
h1.title{margin-bottom:0}.description{color:#555;font-size:1.1em;margin-top:4px}
pre{background:#f6f8fa;padding:8px 12px;overflow-x:auto;border-radius:4px}
pre.output,div.output pre{background:#fff;border-left:3px solid #ccc}
code{font-size:.92em}table{border-collapse:collapse}th,td{border-bottom:1px solid #ddd;padding:2px 8px}
img{max-width:100%}hr{border:0;border-top:1px solid #ddd}
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$pagetitle$ – entrenar</title>
<style>$highlighting-css$</style>
<style>""" + CSS + """</style>
</head>
<body>
<nav id="sidebar">$sidebar$</nav>
<main id="content">
<header id="title-block-header">
<h1 class="title">$title$</h1>
$if(description)$<p class="description">$description$</p>$endif$
</header>
$body$
</main>
</body>
</html>
"""

def front_matter(nb) -> dict:
    "The YAML front matter nbdev puts in the first (raw) cell"
    c = nb['cells'][0] if nb['cells'] else None
    if c and c['cell_type'] == 'raw':
        m = re.match(r'\s*---\n(.*?)\n---', ''.join(c['source']), re.S)
        if m: return yaml.safe_load(m.group(1)) or {}
    return {}

def fence(text:str, cls:str='') -> str:
    "A fenced block that survives backticks inside `text`"
    ticks = '`' * max(3, 1 + max((len(m) for m in re.findall(r'`+', text)), default=0))
    return f"{ticks}{cls}\n{text.rstrip()}\n{ticks}"

def directives(src:str):
    "Quarto/nbdev `#|` directives of a cell, and its source without them"
    opts, body = {}, []
    for line in src.splitlines():
        m = re.match(r'#\|\s*([\w-]+)\s*(?::\s*(.*))?$', line)
        if m and not body: opts[m.group(1)] = (m.group(2) or 'true').strip()
        else: body.append(line)
    return opts, '\n'.join(body).strip('\n')

def output_md(o:dict, page:str, figures:Path, counter:list) -> str:
    "One output as pandoc markdown: an image file, raw HTML, markdown, or text"
    if o['output_type'] == 'stream': return fence(''.join(o.get('text', '')), '{.output}')
    if o['output_type'] == 'error': return fence('\n'.join(o.get('traceback', [])), '{.output .error}')
    data = o.get('data', {})
    if 'image/png' in data:
        counter[0] += 1
        name = f"{page}-{counter[0]}.png"
        (figures / name).write_bytes(base64.b64decode(''.join(data['image/png'])))
        return f'![](figures/{name}){{.plot}}'
    if 'text/html' in data: return fence(''.join(data['text/html']), '{=html}')
    if 'text/markdown' in data: return ''.join(data['text/markdown'])
    if 'text/plain' in data: return fence(''.join(data['text/plain']), '{.output}')
    return ''

def notebook_md(nb, page:str, figures:Path) -> str:
    "A processed notebook as one pandoc markdown document"
    parts, counter = [], [0]
    for c in nb['cells'][1:] if front_matter(nb) else nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown': parts.append(src)
        elif c['cell_type'] == 'code':
            opts, body = directives(src)
            if opts.get('include') == 'false' or 'hide' in opts: continue
            if body.strip() and opts.get('echo') != 'false': parts.append(fence(body, '{.python}'))
            if opts.get('output') != 'false':
                parts += [output_md(o, page, figures, counter) for o in c.get('outputs', [])]
    return '\n\n'.join(p for p in parts if p.strip()) + '\n'

def sidebar_entries(contents, pages:dict) -> list:
    "(kind, text, href, children) items from Quarto's sidebar `contents`"
    out = []
    for e in contents or []:
        if isinstance(e, str): e = {'href': e}
        if 'section' in e: out.append(('section', e['section'], pages.get(e.get('href'), (None,))[0], sidebar_entries(e.get('contents'), pages)))
        elif e.get('href') in pages:
            href, title = pages[e['href']]
            out.append(('page', e.get('text') or title, href, []))
    return out

def sidebar_html(entries, current:str) -> str:
    items = []
    for kind, text, href, children in entries:
        label = html.escape(str(text))
        if kind == 'section':
            head = f'<a href="{href}">{label}</a>' if href else label
            items.append(f'<li><div class="section">{head}</div>{sidebar_html(children, current)}</li>')
        else:
            cls = ' class="active"' if href == current else ''
            items.append(f'<li><a href="{href}"{cls}>{label}</a></li>')
    return f"<ul>{''.join(items)}</ul>"

def relink(text:str, by_notebook:dict) -> str:
    "Links to the published site and to notebooks become links between preview pages"
    text = re.sub(r'href="' + re.escape(SITE_URL) + r'([^"]*)"', r'href="\1"', text)
    text = re.sub(r'href="' + re.escape(SITE_URL.rstrip('/')) + r'"', 'href="index.html"', text)
    def nb_link(m):
        target, frag = m.group(1), m.group(2) or ''
        return f'href="{by_notebook.get(Path(target).name, target)}{frag}"'
    return re.sub(r'href="(?!https?:)([^"#]*\.ipynb)(#[^"]*)?"', nb_link, text)

def build(proc:Path=ROOT / '_proc', out:Path=ROOT / '_preview') -> list:
    "Render every notebook in `proc` to `out`; return the written pages"
    if shutil.which('pandoc') is None: sys.exit("pandoc not found: apt-get install -y pandoc")
    nbs = sorted(proc.glob('*.ipynb'))
    if not nbs: sys.exit(f"no notebooks in {proc}: run nbdev-proc-nbs first")
    if out.exists(): shutil.rmtree(out)
    (out / 'figures').mkdir(parents=True)
    loaded = {p.name: json.loads(p.read_text()) for p in nbs}
    fm = {k: front_matter(nb) for k, nb in loaded.items()}
    pages = {k: (fm[k].get('output-file') or re.sub(r'^\d+[a-z]?_', '', Path(k).stem) + '.html', fm[k].get('title', Path(k).stem)) for k in loaded}
    by_notebook = {k: v[0] for k, v in pages.items()}
    side_cfg = yaml.safe_load((proc / 'sidebar.yml').read_text()) if (proc / 'sidebar.yml').exists() else {}
    entries = sidebar_entries(((side_cfg.get('website') or {}).get('sidebar') or {}).get('contents'), pages)
    listed = {h for _, _, h, ch in entries for h in [h, *[c[2] for c in ch]]}
    entries += [('page', title, href, []) for href, title in pages.values() if href not in listed]  # nothing unreachable
    template = out / '.template.html'; template.write_text(TEMPLATE)
    written = []
    for k, nb in loaded.items():
        href, title = pages[k]
        meta = {'title': str(title), **({'description': str(fm[k]['description'])} if fm[k].get('description') else {})}
        doc = '---\n' + yaml.safe_dump(meta, allow_unicode=True) + '---\n\n' + notebook_md(nb, Path(href).stem, out / 'figures')
        side = '<a class="site" href="index.html">entrenar</a>' + sidebar_html(entries, href)
        res = subprocess.run(['pandoc', '-f', 'markdown', '-t', 'html5', '--standalone', '--mathml', '--template', str(template),
                              '-V', f'sidebar={side}'], input=doc, capture_output=True, text=True)
        if res.returncode: sys.exit(f"pandoc failed on {k}: {res.stderr}")
        (out / href).write_text(relink(res.stdout, by_notebook))
        written.append(out / href)
    template.unlink()
    return written

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--proc', default=str(ROOT / '_proc')); ap.add_argument('--out', default=str(ROOT / '_preview'))
    ap.add_argument('--run-proc', action='store_true', help='run nbdev-proc-nbs first')
    a = ap.parse_args()
    if a.run_proc: subprocess.run(['nbdev-proc-nbs'], cwd=ROOT, check=True, capture_output=True)
    pages = build(Path(a.proc), Path(a.out))
    print(f"wrote {len(pages)} pages to {a.out}: open {Path(a.out) / 'index.html'}")
