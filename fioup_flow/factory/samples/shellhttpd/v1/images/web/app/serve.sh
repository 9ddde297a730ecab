# Serve /www in the foreground; stop promptly on SIGTERM (sh as PID 1 ignores it otherwise).
httpd -f -p 80 -h /www &
trap 'kill $!; exit 0' TERM INT
wait
