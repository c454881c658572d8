"""The plugin machinery: the table of component kinds, the component base, the plugin manager and registries."""
