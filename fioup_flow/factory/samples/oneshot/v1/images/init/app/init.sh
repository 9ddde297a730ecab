# Prepare the shared volume, then exit 0: a one-shot.
echo "prepared by init" > /data/ready
echo "init: done"
