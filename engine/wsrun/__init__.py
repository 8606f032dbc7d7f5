"""wsrun: a declarative YAML-recipe engine for moving and packaging data products.

Importing the package is deliberately cheap: the command line imports heavy
libraries (jinja2, jsonschema, rich) only when a command needs them.
"""

__version__ = "0.1.0"
