"""The docs preview (tools/preview_docs.py, from nbdev-proc-nbs output) opened in headless Chromium.

Chromium (Debian's `chromium` package) is driven over the Chrome DevTools protocol on a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on file descriptors 3 and 4), so no driver,
websocket library or downloaded browser is needed. Checks: every page loads, every internal link points
at a page and an element that exist, every name in each module's `__all__` is on its page, and every
image (the plots) loaded. Screenshots of two pages go to `screenshots/` (gitignored).
"""
import inspect, base64, fcntl, importlib, json, os, select, shutil, subprocess, sys, tempfile, time
from pathlib import Path
from urllib.parse import unquote, urlsplit
import pytest
import fastcore.test as ft

ROOT = Path(__file__).resolve().parent.parent
PREVIEW, SHOTS = ROOT / '_preview', ROOT / 'screenshots'
MODULE_PAGES = {'entrenar.io': 'io.html', 'entrenar.numtext': 'numtext.html', 'entrenar.merge': 'merge.html',
                'entrenar.quantize': 'quantize.html', 'entrenar.hf_pipeline': 'hub.html', 'entrenar.widgets': 'widgets.html',
                'entrenar.cli': 'cli.html', 'entrenar.backend': 'backend.html', 'entrenar.errors': 'errors.html', 'entrenar.gguf': 'gguf.html',
                'entrenar.kquants': 'kquants.html', 'entrenar.imatrix': 'imatrix.html', 'entrenar.moe': 'moe.html',
                'entrenar.runner': 'runner.html', 'entrenar.distributed': 'distributed.html', 'entrenar.lora': 'lora.html',
                'entrenar.vocab': 'vocab.html', 'entrenar.cuda': 'cuda.html',
                'entrenar.cuda_merge': 'cuda_merge.html', 'entrenar.cuda_kquants': 'cuda_kquants.html',
                'entrenar.cuda_blocks': 'cuda_blocks.html', 'entrenar.cuda_weighted': 'cuda_weighted.html'}
PLOT_PAGES = ['quantize.html', 'kquants.html', 'gguf.html', 'widgets.html', 'tutorial.html']
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get('ENTRENAR_REQUIRE_BROWSER'),
                                reason='needs Debian chromium (apt-get install -y chromium); tools/test.sh installs it')

class Chromium:
    "Headless Chromium driven over the DevTools protocol on a pipe"
    def __init__(self, width=1280, height=900):
        self.profile = tempfile.mkdtemp(prefix='entrenar-chromium-')
        to_chrome_r, self._w = os.pipe(); self._r, from_chrome_w = os.pipe()
        def fds():  # the browser reads commands on fd 3 and writes replies on fd 4
            a, b = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3); os.dup2(b, 4)   # inheritable; every other descriptor of ours is close-on-exec
        flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--remote-debugging-pipe',
                 f'--user-data-dir={self.profile}', f'--window-size={width},{height}', 'about:blank']
        self.proc = subprocess.Popen([CHROMIUM, *flags], preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False)
        os.close(to_chrome_r); os.close(from_chrome_w)
        self._id, self._buf, self.events = 0, b'', []
        target = self.call('Target.createTarget', url='about:blank')['targetId']
        self.session = self.call('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
        self.call('Page.enable', session=True)
        self.call('Emulation.setDeviceMetricsOverride', session=True, width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _read(self, timeout=60):
        end = time.time() + timeout
        while b'\0' not in self._buf:
            left = end - time.time()
            if left <= 0 or not select.select([self._r], [], [], left)[0]: raise TimeoutError('no reply from chromium')
            chunk = os.read(self._r, 1 << 20)
            if not chunk: raise RuntimeError('chromium closed the pipe')
            self._buf += chunk
        msg, self._buf = self._buf.split(b'\0', 1)
        return json.loads(msg)

    def call(self, method, session=False, **params):
        self._id += 1
        msg = {'id': self._id, 'method': method, 'params': params, **({'sessionId': self.session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b'\0')
        while True:
            m = self._read()
            if m.get('id') == self._id:
                if 'error' in m: raise RuntimeError(f"{method}: {m['error']}")
                return m['result']
            self.events.append(m)

    def wait_event(self, name, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            for i, m in enumerate(self.events):
                if m.get('method') == name: del self.events[: i + 1]; return m
            self.events.append(self._read(max(0.1, end - time.time())))
        raise TimeoutError(name)

    def open(self, url):
        self.events.clear()
        res = self.call('Page.navigate', session=True, url=url)
        if res.get('errorText'): raise AssertionError(f"{url}: {res['errorText']}")
        self.wait_event('Page.loadEventFired')
        return res

    def js(self, expression):
        res = self.call('Runtime.evaluate', session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in res: raise AssertionError(res['exceptionDetails'])
        return res['result'].get('value')

    def screenshot(self, path):
        h = self.js('document.documentElement.scrollHeight')
        data = self.call('Page.captureScreenshot', session=True, format='png', captureBeyondViewport=True,
                         clip={'x': 0, 'y': 0, 'width': 1280, 'height': min(int(h), 4000), 'scale': 1})['data']
        Path(path).write_bytes(base64.b64decode(data))

    def close(self):
        try: self.call('Browser.close')
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        os.close(self._w); os.close(self._r); shutil.rmtree(self.profile, ignore_errors=True)

PAGE_STATE = """(() => ({
  title: document.title, header: !!document.querySelector('#title-block-header h1'),
  sidebar: [...document.querySelectorAll('#sidebar a')].length,
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  images: [...document.images].map(i => ({src: i.src.slice(0, 60), complete: i.complete, width: i.naturalWidth})),
  text: document.body.innerText}))()"""

def _stale():
    "The preview is missing or older than a notebook"
    idx = PREVIEW / 'index.html'
    return not idx.exists() or any(p.stat().st_mtime > idx.stat().st_mtime for p in (ROOT / 'nbs').glob('*.ipynb'))

@pytest.fixture(scope='module')
def site():
    "Every preview page as its state in the browser (the preview is rebuilt when stale)"
    if CHROMIUM is None: pytest.fail('chromium not found: apt-get install -y chromium (tools/test.sh does, as root)')
    if _stale():
        subprocess.run([str(Path(sys.executable).parent / 'nbdev-proc-nbs')], cwd=ROOT, check=True, capture_output=True)
        subprocess.run([sys.executable, str(ROOT / 'tools' / 'preview_docs.py')], cwd=ROOT, check=True, capture_output=True)
    SHOTS.mkdir(exist_ok=True)
    b, pages = Chromium(), {}
    try:
        for p in sorted(PREVIEW.glob('*.html')):
            b.open(p.as_uri())
            b.js("Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))")
            pages[p.name] = b.js(PAGE_STATE)
            if p.name in ('index.html', 'widgets.html', 'tutorial.html'): b.screenshot(SHOTS / p.name.replace('.html', '.png'))
    finally: b.close()
    return pages

def test_every_page_loads(site):
    for name in ['index.html', 'tutorial.html', 'design.html', *MODULE_PAGES.values()]: assert name in site, f"{name} was not rendered"
    for name, s in site.items():
        assert s['header'] and s['title'].endswith('entrenar'), f"{name}: no title header"
        ft.test_eq(s['sidebar'] >= 10, True)
        assert 'Traceback' not in s['text'], f"{name} shows a traceback"

def test_internal_links_resolve(site):
    bad = []
    for name, s in site.items():
        for href in s['links']:
            u = urlsplit(href)
            if u.scheme != 'file': continue
            target = Path(unquote(u.path))
            if target.parent != PREVIEW or target.name not in site: bad.append(f"{name} -> {target.name}"); continue
            frag = unquote(u.fragment)
            # nbdev links private names too (`_Chunker`), but pandoc (and so Quarto) drops the leading underscore of
            # heading ids and private names get no doc entry: for those the page is the target
            if frag and not frag.startswith('_') and frag not in site[target.name]['ids']: bad.append(f"{name} -> {target.name}#{frag}")
    ft.test_eq(bad, [])

def test_every_api_entry_is_on_its_page(site):
    missing = []
    for mod, page in MODULE_PAGES.items():
        m, s = importlib.import_module(mod), site[page]
        for name in m.__all__:
            obj = getattr(m, name)
            defined_here = (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, '__module__', None) == mod
            documented = name.lower() in s['ids'] if defined_here else name in s['text']   # objects (a Kernels, a table): named in the prose
            if not documented: missing.append(f"{page}: {name}")
    ft.test_eq(missing, [])

def test_plots_show_as_images(site):
    for name in PLOT_PAGES:
        imgs = site[name]['images']
        assert imgs, f"{name} has no image"
    for name, s in site.items():
        for i in s['images']: assert i['complete'] and i['width'] > 0, f"{name}: image {i['src']} did not load"

def test_screenshots_saved(site):
    for n in ('index.png', 'tutorial.png'):
        p = SHOTS / n
        ft.test_eq(p.exists() and p.read_bytes()[:4] == b'\x89PNG' and p.stat().st_size > 10_000, True)
