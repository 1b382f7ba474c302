"""Write README.md from nbs/index.ipynb (the docs home page), the way nbdev-readme would without Quarto.

`--check` exits 1 when README.md is not what index.ipynb gives.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _output_text(o):
    if o.get('output_type') == 'stream': return ''.join(o.get('text', ''))
    data = o.get('data', {})
    if 'text/markdown' in data: return None
    return ''.join(data.get('text/plain', ''))

def render(nb_path=ROOT / 'nbs' / 'index.ipynb') -> str:
    nb, parts = json.loads(Path(nb_path).read_text()), []
    for c in nb['cells']:
        src = ''.join(c['source'])
        lines = src.splitlines()
        directives = [l for l in lines if l.startswith('#|')]
        if any(re.match(r'#\|\s*(hide|exec_doc|eval:\s*false)', d) for d in directives if 'hide' in d): continue
        body = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if c['cell_type'] == 'markdown': parts.append(re.sub(r'\]\((?!https?:)([\w.-]+\.ipynb)\)', r'](nbs/\1)', body))  # site links -> the notebooks
        elif c['cell_type'] == 'code':
            if body: parts.append(f"```{'bash' if body.startswith('!') else 'python'}\n{body.lstrip('!')}\n```")
            for o in c.get('outputs', []):
                t = _output_text(o)
                if t and t.strip(): parts.append(f"```\n{t.rstrip()}\n```")
    return "<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n" + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(), ROOT / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("README.md is out of date: run python tools/make_readme.py and commit it")
    else: readme.write_text(text)
