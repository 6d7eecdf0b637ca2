"""TotalRegistrator Node: the PACS processing node (receive, route, find priors, register, send)."""
