"""The report of a whole run, from the DVC-tracked files only: statistics (`stats`), the HTML
building blocks (`html`), figures (`plots`), the report itself (`report`) and the Markdown tables
of `isoprobe results` (`results`).

Imports: every other package.
"""
