"""README.md and docs/ speak to users of a clone of this repository: the README stays short, every
relative link (pages, anchors, pictures) resolves, no command needs the development machine's
../shared folder, and the README's test command is the one CI runs."""
import re

from conftest import ROOT

PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'[`*_]', '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(page) -> set:
    return {slug(line.lstrip('#')) for line in page.read_text().splitlines() if line.startswith('#')}


def test_readme_is_short():
    lines = (ROOT / 'README.md').read_text().splitlines()
    assert len(lines) <= 250, len(lines)


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r'^[a-z]+:', target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition('#')
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append('%s: %s (no such file)' % (page.name, target))
            elif anchor and file.suffix == '.md' and anchor not in anchors(file):
                broken.append('%s: %s (no such heading in %s)' % (page.name, target, file.name))
    assert not broken, '\n'.join(broken)


def test_nothing_needs_the_shared_folder():
    offenders = []
    for page in PAGES + sorted((ROOT / 'docs' / 'examples').glob('*')):
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if '../shared' in line or '/shared/data' in line:
                offenders.append('%s:%d: %s' % (page.relative_to(ROOT), number, line.strip()))
    assert not offenders, '\n'.join(offenders)


def test_readme_starts_with_the_two_commands_and_ci_runs_its_test_command():
    readme = (ROOT / 'README.md').read_text()
    first_block = readme.split('```bash\n', 1)[1].split('```', 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [['make', 'demo'], ['make', 'test']]
    command = re.search(r'runs: (python -m pytest [^\n`]+)', readme).group(1).strip()
    makefile = (ROOT / 'Makefile').read_text()
    assert '$(PYTHON) -m pytest' + command[len('python -m pytest'):] in makefile  # what `make test` runs
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()
