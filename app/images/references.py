"""Image references: parse and normalize them as Docker does.

The grammar is distribution's `reference` package (v2.8 `reference/regexp.go`):

    reference       := name [ ":" tag ] [ "@" digest ]
    name            := [domain "/"] path-component ["/" path-component]*
    domain          := host [":" port-number]
    host            := domain-component ["." domain-component]* | "[" IPv6 "]"
    domain-component:= /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    path-component  := alpha-numeric [separator alpha-numeric]*
    alpha-numeric   := /[a-z0-9]+/
    separator       := /[_.]|__|[-]*/
    tag             := /[\\w][\\w.-]{0,127}/
    digest          := sha256:<64 hex> | sha512:<128 hex>

Normalization is `ParseNormalizedNamed` + `TagNameOnly`: the first component is a domain
only if it contains "." or ":", or is "localhost", or has an uppercase letter; otherwise the
domain is `docker.io`, and a one-component path there gets `library/`. `index.docker.io`
becomes `docker.io`. With neither tag nor digest, the tag is `latest`. `name:tag@digest`
keeps both; the digest is what gets pulled. Errors are INVALID_ARGUMENT naming the part
that is wrong. Nothing here talks to a registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..content.digests import validate_digest
from ..errors import CargoholdError, invalid

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
# Docker Hub's API is not served at docker.io itself.
DEFAULT_API_HOST = "registry-1.docker.io"
OFFICIAL_REPOSITORY_PREFIX = "library/"
DEFAULT_TAG = "latest"
# distribution's NameTotalLengthMax: the name (domain/path) at most this long.
NAME_TOTAL_LENGTH_MAX = 255

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_PATH_COMPONENT = re.compile(rf"^{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])$")
_PORT = re.compile(r"^[0-9]+$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A normalized reference. `str()` gives `domain/path[:tag][@digest]`."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`domain/path`, the repository's full name."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if any, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host:port the distribution API is served on."""
        return DEFAULT_API_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    def with_tag(self, tag: str) -> Reference:
        _check_tag(tag, f"{self.name}:{tag}")
        return Reference(self.domain, self.path, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, validate_digest(digest))

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: object, *, default_tag: bool = True) -> Reference:
    """Parse and normalize `text` (`busybox` -> `docker.io/library/busybox:latest`).

    With `default_tag` false, a reference with neither tag nor digest keeps neither.
    Raises INVALID_ARGUMENT naming what is wrong.
    """
    if not isinstance(text, str):
        raise invalid(f"reference must be a string, not {type(text).__name__}")
    shown = _shown(text)
    if not text:
        raise invalid("reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise invalid(f'reference "{shown}" contains whitespace')
    remainder, at, digest = text.partition("@")
    if at:
        if "@" in digest:
            raise invalid(f'reference "{shown}" has more than one "@"')
        try:
            validate_digest(digest)
        except CargoholdError as error:
            raise invalid(f'reference "{shown}": {error.detail}') from None
    name, tag = _split_tag(remainder)
    if tag is not None:
        _check_tag(tag, text)
    domain, path = _split_domain(name, text)
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPOSITORY_PREFIX + path
    if len(f"{domain}/{path}") > NAME_TOTAL_LENGTH_MAX:
        raise invalid(f'reference "{shown}": repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters')
    if tag is None and not at and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest if at else None)


def _split_tag(remainder: str) -> tuple[str, str | None]:
    """`name:tag` -> (name, tag); a ":" before the last "/" is a port, not a tag."""
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        return remainder[:colon], remainder[colon + 1:]
    return remainder, None


def _check_tag(tag: str, text: str) -> None:
    if not _TAG.match(tag):
        raise invalid(f'reference "{_shown(text)}": invalid tag "{_shown(tag, 140)}": a tag is 1 to 128 of '
                      "letters, digits, _ . - and cannot start with . or -")


def _split_domain(name: str, text: str) -> tuple[str, str]:
    shown = _shown(text)
    if not name:
        raise invalid(f'reference "{shown}" has no repository name')
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        domain, path = first, rest
        _check_domain(domain, shown)
        if domain == LEGACY_DEFAULT_DOMAIN:
            domain = DEFAULT_DOMAIN
    else:
        if _HEX64.match(name):
            raise invalid(f'reference "{shown}": a repository name cannot be 64 hexadecimal digits '
                          "(it would read as an image id)")
        domain, path = DEFAULT_DOMAIN, name
    if not path:
        raise invalid(f'reference "{shown}" has no repository path after the domain "{domain}"')
    for component in path.split("/"):
        if not component:
            raise invalid(f'reference "{shown}": empty path component (doubled or trailing "/")')
        if component.lower() != component and _PATH_COMPONENT.match(component.lower()):
            raise invalid(f'reference "{shown}": repository name must be lowercase ("{_shown(component, 80)}")')
        if not _PATH_COMPONENT.match(component):
            raise invalid(f'reference "{shown}": invalid path component "{_shown(component, 80)}": use lowercase '
                          "letters and digits, separated by one '.', '_', '__' or dashes")
    return domain, path


def _check_domain(domain: str, shown: str) -> None:
    host, port = domain, None
    if domain.startswith("["):
        end = domain.find("]")
        host, rest = domain[:end + 1], domain[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise invalid(f'reference "{shown}": invalid registry domain "{domain}"')
            port = rest[1:]
    elif ":" in domain:
        host, _, port = domain.partition(":")
    if not _HOST.match(host):
        raise invalid(f'reference "{shown}": invalid registry host "{_shown(host, 80)}"')
    if port is not None and (not _PORT.match(port) or not 0 < int(port) < 65536):
        raise invalid(f'reference "{shown}": invalid registry port "{_shown(port, 20)}" (1 to 65535)')


def _shown(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
