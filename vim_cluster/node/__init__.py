"""The trio shell: the only package that awaits anything."""
