# Orthanc with the DICOMweb plugin from Debian's packages, for deploy/smoke.sh on a
# machine without a registry. Like the official image it reads every JSON file in
# /etc/orthanc (compose mounts orthanc.json there) and stores in /var/lib/orthanc/db.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb \
 && rm -rf /var/lib/apt/lists/* /etc/orthanc/*.json \
 && mkdir -p /var/lib/orthanc/db
# only keys that the mounted orthanc.json does not set: Orthanc refuses a key set in two files
RUN printf '%s\n' '{' \
      '  "Plugins": ["/usr/share/orthanc/plugins"],' \
      '  "StorageDirectory": "/var/lib/orthanc/db",' \
      '  "IndexDirectory": "/var/lib/orthanc/db"' \
      '}' > /etc/orthanc/plugins.json
CMD ["Orthanc", "/etc/orthanc/"]
