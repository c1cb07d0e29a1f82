"""The admin console at /admin/ui: server-rendered pages (Jinja2) over the admin API's own service functions,
signed in with the admin credential through a form that works without JavaScript."""
