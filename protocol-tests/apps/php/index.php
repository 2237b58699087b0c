<?php
echo "php index\n";
