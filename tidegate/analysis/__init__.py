"""Projects (SQL steps over sources), dashboards (widgets drawing steps), their shares and
links, and usage: the governed analysis layer over sources. Every row it shows is computed
under the reader's own access (tidegate.access), never stored under its author's."""
